"""The machine-learning scenario (issue 18): a Python base plus triton bumped between two releases,
built at two sizes so that one table shows how the cost grows with the image.

triton's libtriton.so is one shared library of 416 MB in 3.6.0 and 506 MB in 3.8.0. The large size
installs the whole triton wheel and a scientific stack beside it (one layer, as one ``pip install``
makes it); the half size installs triton alone without its CUDA toolchain (``backends/nvidia``: ptxas,
cupti), so the 400 MB library stays and the rest shrinks. Only the peers that matter at this size run:
``zstd -19 --long=31`` of the full image, ``zstd --patch-from`` and ``xdelta3 -9`` with its source
window raised to the old layer, on the changed layer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from benchlib import images, inputs, methods, report
from benchlib.proc import Cost, StepFailed, log
from benchlib.scenarios import SITE_PACKAGES, Workshop

NAME = "ml"
PLATFORM = ["--only-binary=:all:", "--python-version", inputs.PYTHON, "--implementation", "cp", "--abi", "cp311",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
            "--platform", "manylinux2014_x86_64"]
TRITON = ("triton==3.6.0", "triton==3.8.0")
STACK = ["numpy==1.26.4", "scipy==1.11.4", "pandas==2.1.4", "sympy==1.12", "mpmath==1.3.0", "networkx==3.2.1",
         "jinja2==3.1.3", "markupsafe==2.1.5", "filelock==3.13.1", "fsspec==2023.12.2", "python-dateutil==2.8.2",
         "pytz==2023.3.post1", "tzdata==2023.4", "six==1.16.0", "typing-extensions==4.9.0"]
CUDA_TOOLCHAIN = "triton/backends/nvidia"
MEMORY_TARGET_KIB = report.MEMORY_TARGET_MIB << 10


@dataclass(frozen=True)
class Size:
    name: str
    summary: str
    stack: bool  # the scientific stack beside triton
    cuda_toolchain: bool  # triton's backends/nvidia kept


SIZES = [Size("ml-half", "python base + triton without backends/nvidia", stack=False, cuda_toolchain=False),
         Size("ml", "python base + triton + numpy/scipy/pandas/sympy/networkx/...", stack=True, cuda_toolchain=True)]


@dataclass(frozen=True)
class Measured:
    """One size: the archives, the changed layer and every method's result."""

    size: Size
    old_image: int
    new_image: int
    changed: list[tuple[int, int]]
    made: methods.Shipped
    archive: Cost
    engine: Cost
    load: Cost
    peers: list[methods.Shipped]  # full image, zstd patch-from, xdelta3 -B
    deltaimg_layers: list[str]


def build(shop: Workshop, size: Size) -> tuple[str, str]:
    base, built = shop.python, []
    stack = [inputs.wheels(shop.cache, "ml-stack", STACK, PLATFORM)] if size.stack else []
    for tag, triton in zip((f"{images.REPOSITORY}:{size.name}-v1", f"{images.REPOSITORY}:{size.name}-v2"), TRITON):
        log(f"docker build {tag}: {size.summary} ({triton})")
        context = shop.context(tag.split(":")[1])
        wheels = inputs.wheels(shop.cache, f"ml-{triton.replace('==', '-')}", [triton], PLATFORM)
        inputs.pip_install([wheels, *stack], context / "site", compile_pyc=True)
        if not size.cuda_toolchain:
            shutil.rmtree(context / "site" / CUDA_TOOLCHAIN)
        built.append(images.build(tag, context, f"FROM {base}\nCOPY site/ {SITE_PACKAGES}\n"))
        shutil.rmtree(context)
    return built[0], built[1]


def measure(shop: Workshop, size: Size, key: Path, workdir: Path) -> Measured:
    old_tag, new_tag = build(shop, size)
    work = workdir / size.name
    work.mkdir()
    log(f"docker save {old_tag}, {new_tag}")
    old = images.read_saved(images.save(old_tag, work / "old.tar"))
    new = images.read_saved(images.save(new_tag, work / "new.tar"))
    pairs = methods.changed_pairs(old, new, work)  # the peers first, deltaimg's numbers last
    log("full image: zstd -19 --long=31")
    peers = [methods.full_image_long(new, work)]
    log(f"full image: {report.size(peers[0].size)} in {report.seconds(peers[0].cost.seconds)}, {report.memory(peers[0].cost)}")
    for name, encode in (("zstd --patch-from", methods.zstd_patch), ("xdelta3 -9 -B", methods.xdelta3_window)):
        log(f"{name} ({len(pairs)} layers, {report.size(sum(p.new.stat().st_size for p in pairs))})")
        peers.append(encode(pairs, work))
        log(f"{name}: {report.size(peers[-1].size)} in {report.seconds(peers[-1].cost.seconds)}, "
            f"{report.memory(peers[-1].cost)}")
    changed = [(pair.position, pair.new.stat().st_size) for pair in pairs]
    for pair in pairs:
        pair.new.unlink()
        pair.old.unlink()
    log("deltaimg make")
    bundle = work / "bundle.dimg"
    made, manifest = methods.deltaimg_make(old, new, key, bundle)
    log(f"deltaimg make: {report.size(made.size)} in {report.seconds(made.cost.seconds)}, "
        f"{report.memory(made.cost)}; deltaimg apply --base (archive)")
    archive, result = methods.deltaimg_apply_archive(bundle, key, old, work / "applied.tar")
    if result.get("image_id") != new.image_id:
        raise StepFailed(f"deltaimg apply --base rebuilt {result.get('image_id')}, not {new.image_id[:19]}")
    (work / "applied.tar").unlink()
    log(f"deltaimg apply --base: {report.seconds(archive.seconds)}, {report.memory(archive)}; "
        f"deltaimg apply into the engine ({new_tag} removed first)")
    images.remove(new_tag)
    engine = methods.deltaimg_apply_engine(bundle, key)
    images.expect_loaded(new_tag, new.image_id, "deltaimg apply")
    log(f"deltaimg apply: {report.seconds(engine.seconds)}, {report.memory(engine)}; "
        f"docker load of the full new image ({new_tag} removed first)")
    images.remove(new_tag)
    load = images.load(new.path)
    images.expect_loaded(new_tag, new.image_id, "docker load")
    log(f"docker load: {report.seconds(load.seconds)}")
    measured = Measured(size, old.path.stat().st_size, new.path.stat().st_size, changed, made, archive, engine,
                        load, peers, report.layer_stats(manifest))
    shutil.rmtree(work)
    for tag in (new_tag, old_tag):
        images.remove(tag)
    return measured


def run(shop: Workshop, key: Path, workdir: Path) -> list[str]:
    """Both sizes, smaller first; the markdown that docs/benchmarks.md's ML section shows."""
    shop.notes[NAME] = f"{TRITON[0]} -> {TRITON[1]}"
    return table([measure(shop, size, key, workdir) for size in SIZES])


def _cell(value: int | None, cost: Cost | None) -> list[str]:
    return [report.size(value) if value is not None else "",
            report.seconds(cost.seconds) if cost else "", report.memory(cost) if cost else ""]


def table(sizes: list[Measured]) -> list[str]:
    small, large = sizes
    rows = []
    lines = [("`deltaimg make` (bundle)", lambda m: (m.made.size, m.made.cost)),
             ("`deltaimg apply --base OLD.tar -o NEW.tar` (archive)", lambda m: (None, m.archive)),
             ("`deltaimg apply` (into the engine)", lambda m: (None, m.engine)),
             ("`docker load` of the full new image", lambda m: (None, m.load)),
             *((f"{peer.what}", lambda m, n=number: (m.peers[n].size, m.peers[n].cost))
               for number, peer in enumerate(small.peers))]
    for label, pick in lines:
        (small_size, small_cost), (large_size, large_cost) = pick(small), pick(large)
        growth = report.times(large_cost.seconds, small_cost.seconds)
        rows.append([label, *_cell(small_size, small_cost), *_cell(large_size, large_cost), growth])
    header = ["method"] + [f"{m.size.name}: {what}" for m in sizes for what in ("size", "time", "peak")] + \
             ["time, large / half"]
    out = [f"### {NAME}", "", f"Python base + an ML runtime bumped: {small.size.summary} ({small.size.name}); "
           f"{large.size.summary} ({large.size.name}). {TRITON[0]} -> {TRITON[1]}.", ""]
    for m in sizes:
        out.append(f"- {m.size.name}: images of {report.size(m.old_image)} and {report.size(m.new_image)} as "
                   f"`docker save` output; changed layers: "
                   + ", ".join(f"layer {p} ({report.size(n)} uncompressed)" for p, n in m.changed)
                   + f"; image growth large / half: {report.times(large.new_image, small.new_image)}")
    out += ["", *report._table(header, rows), "", *targets(sizes), ""]
    for m in sizes:
        out += [f"What `deltaimg make` did ({m.size.name}):", "", *(f"- {line}" for line in m.deltaimg_layers), ""]
    return out


def targets(sizes: list[Measured]) -> list[str]:
    rows = []
    for m in sizes:
        full, patch, xdelta = m.peers
        peak = max((m.made.cost, m.archive, m.engine), key=lambda c: c.peak_kib or 0)
        best = min(patch, xdelta, key=lambda s: s.size)
        rows += [[f"{m.size.name}: make and apply peak < {report.MEMORY_TARGET_MIB} MiB",
                  f"make {report.memory(m.made.cost)}, apply {report.memory(m.archive)} (archive), "
                  f"{report.memory(m.engine)} (engine)", report._met((peak.peak_kib or 0) < MEMORY_TARGET_KIB)],
                 [f"{m.size.name}: make no slower than `zstd -19 --long=31` of the full image",
                  f"{report.seconds(m.made.cost.seconds)} vs {report.seconds(full.cost.seconds)}",
                  report._met(m.made.cost.seconds <= full.cost.seconds)],
                 [f"{m.size.name}: bundle no bigger than the best of xdelta3 -9 -B and zstd --patch-from",
                  f"{report.size(m.made.size)} vs {report.size(best.size)} ({best.method})",
                  report._met(m.made.size <= best.size)]]
    return report._table(["target", "measured", "met?"], rows)
