"""The ways of shipping an update that the benchmark compares, each measured the same way."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchlib.images import Saved
from benchlib.proc import NO_COST, Cost, measure, run

REPO = Path(__file__).resolve().parents[2]
THREADS = f"-T{os.cpu_count() or 1}"  # the cores deltaimg make uses too
# deltaimg from this checkout, run by this interpreter
DELTAIMG = [sys.executable, "-m", "deltaimg"]
DELTAIMG_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@dataclass(frozen=True)
class Shipped:
    """One method's result: the bytes that travel and what producing them cost."""

    method: str
    what: str
    size: int
    cost: Cost
    layer_sizes: tuple[int, ...] = ()  # per changed layer, for the methods that code layers one by one


@dataclass(frozen=True)
class Pair:
    """A changed layer of the new image and the old layer at its position (or an empty file)."""

    position: int
    old: Path
    new: Path


def changed_pairs(old: Saved, new: Saved, workdir: Path) -> list[Pair]:
    """Extract every new layer whose diff_id the old image lacks, with its positional partner."""
    empty = workdir / "empty"
    empty.touch()
    pairs = []
    for position, (diff_id, member) in enumerate(new.layers):
        if diff_id in old.diff_ids:
            continue
        new_path = new.extract(member, workdir / f"new-{position}.tar")
        old_path = empty
        if position < len(old.layers):
            old_path = old.extract(old.layers[position][1], workdir / f"old-{position}.tar")
        pairs.append(Pair(position, old_path, new_path))
    return pairs


def full_image(new: Saved, workdir: Path) -> Shipped:
    out = workdir / "full.tar.zst"
    cost, _ = measure(["zstd", "-q", "-f", "-19", "--long=27", THREADS, new.path, "-o", out])
    return Shipped("full image", r"`docker save NEW \| zstd -19 --long=27`", out.stat().st_size, cost)


def config_zstd(new: Saved, workdir: Path) -> int:
    """The new image config with ``zstd -19``: what every layer-only method must ship on top."""
    config, out = workdir / "config.json", workdir / "config.json.zst"
    config.write_bytes(new.config)
    run(["zstd", "-q", "-f", "-19", config, "-o", out])
    return out.stat().st_size


def _per_layer(method: str, what: str, pairs: list[Pair], encode: Callable[[Pair, Path], Cost], workdir: Path) -> Shipped:
    sizes, total = [], NO_COST
    for pair in pairs:
        out = workdir / f"layer-{pair.position}.out"
        total = total + encode(pair, out)
        sizes.append(out.stat().st_size)
        out.unlink()
    return Shipped(method, what, sum(sizes), total, tuple(sizes))


def layers_only(pairs: list[Pair], workdir: Path) -> Shipped:
    def encode(pair: Pair, out: Path) -> Cost:
        return measure(["zstd", "-q", "-f", "-19", "--long=27", THREADS, pair.new, "-o", out])[0]
    return _per_layer("changed layers", "new layers the old image lacks, each `zstd -19 --long`", pairs, encode, workdir)


def xdelta3(pairs: list[Pair], workdir: Path) -> Shipped:
    def encode(pair: Pair, out: Path) -> Cost:
        return measure(["xdelta3", "-9", "-e", "-f", "-s", pair.old, pair.new, out])[0]
    return _per_layer("xdelta3", "`xdelta3 -9 -e -s OLD NEW` per changed layer", pairs, encode, workdir)


def zstd_patch(pairs: list[Pair], workdir: Path) -> Shipped:
    def encode(pair: Pair, out: Path) -> Cost:
        return measure(["zstd", "-q", "-f", "-19", "--long=31", "--single-thread", f"--patch-from={pair.old}",
                        pair.new, "-o", out])[0]
    return _per_layer("zstd patch-from", "`zstd -19 --long=31 --patch-from=OLD NEW` per changed layer", pairs,
                      encode, workdir)


def rdiff(pairs: list[Pair], workdir: Path) -> Shipped:
    def encode(pair: Pair, out: Path) -> Cost:
        signature, delta = workdir / "rdiff.sig", workdir / "rdiff.delta"
        cost = measure(["rdiff", "-f", "signature", pair.old, signature])[0]
        cost = cost + measure(["rdiff", "-f", "delta", signature, pair.new, delta])[0]
        cost = cost + measure(["zstd", "-q", "-f", "-19", THREADS, delta, "-o", out])[0]
        signature.unlink()
        delta.unlink()
        return cost
    return _per_layer("rdiff + zstd", "`rdiff signature` + `rdiff delta` per changed layer, then `zstd -19`", pairs,
                      encode, workdir)


def deltaimg_version() -> str:
    return run([*DELTAIMG, "version"], env=DELTAIMG_ENV).strip()


def keygen(workdir: Path) -> Path:
    key = workdir / "bench-key"
    run([*DELTAIMG, "keygen", key], env=DELTAIMG_ENV)
    return key


def deltaimg_make(old: Saved, new: Saved, key: Path, bundle: Path) -> tuple[Shipped, dict]:
    cost, out = measure([*DELTAIMG, "make", old.path, new.path, "-o", bundle, "--key", key, "--json", "--quiet"],
                        env=DELTAIMG_ENV)
    manifest = json.loads(out)
    payloads = tuple(layer["payload_size"] for layer in manifest["layers"] if layer["method"] == "delta")
    return Shipped("deltaimg", "`deltaimg make` bundle (signed)", bundle.stat().st_size, cost, payloads), manifest


def deltaimg_apply_archive(bundle: Path, key: Path, old: Saved, output: Path) -> tuple[Cost, dict]:
    cost, out = measure([*DELTAIMG, "apply", bundle, "--trust", f"{key}.pub", "--base", old.path, "-o", output,
                         "--force", "--json", "--quiet"], env=DELTAIMG_ENV)
    return cost, json.loads(out)


def deltaimg_apply_engine(bundle: Path, key: Path, read_store: bool = True) -> Cost:
    """``read_store`` False: the base is read through ``docker save``, as on a host where deltaimg is not root."""
    return measure([*DELTAIMG, "apply", bundle, "--trust", f"{key}.pub", "--no-swap", "--json", "--quiet"],
                   env={**DELTAIMG_ENV, "DELTAIMG_READ_STORE": "1" if read_store else "0"})[0]


# -- the peers of the machine-learning scenario (benchlib/ml.py): settings that cover a 1 GB layer --
XDELTA3_WINDOW_MAX = 1 << 31  # xdelta3 refuses a larger -B


def full_image_long(new: Saved, workdir: Path) -> Shipped:
    """``zstd -19 --long=31`` of the whole new image: its window covers all of it."""
    out = workdir / "full.tar.zst"
    cost, _ = measure(["zstd", "-q", "-f", "-19", "--long=31", THREADS, new.path, "-o", out])
    size = out.stat().st_size
    out.unlink()
    return Shipped("full image", r"`docker save NEW \| zstd -19 --long=31`", size, cost)


def xdelta3_window(pairs: list[Pair], workdir: Path) -> Shipped:
    """``xdelta3 -9`` with its source window (``-B``) raised to the whole old layer."""
    def encode(pair: Pair, out: Path) -> Cost:
        window = min(max(pair.old.stat().st_size, 1 << 26), XDELTA3_WINDOW_MAX)
        return measure(["xdelta3", "-9", "-B", str(window), "-e", "-f", "-s", pair.old, pair.new, out])[0]
    return _per_layer("xdelta3 -B", "`xdelta3 -9 -B <old layer size> -e -s OLD NEW` per changed layer", pairs,
                      encode, workdir)
