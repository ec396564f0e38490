"""A bundle signed by a trusted key can still be hostile (a stolen key, a compromised build host).

Whatever such a bundle asks for, apply ends with one line on stderr and the exit code of what is
wrong (10: the signed content is malformed or asks for more than deltaimg ever writes; 12: bytes
do not decode to what was declared), writes nothing, and stays within apply's memory budget
(measured as the peak RSS of the command). The bundles are forged here: manifest, recipes and
frames written by hand with deltaimg's own format code, then signed with the trusted test key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from deltaimg.engine.dockerd import DockerEngine
from deltaimg.codec import bsdiff, varint, zstd_ref

from deltaimg.tar import writer as archivewriter

from deltaimg.bundle import signing
from deltaimg.bundle import format as bundle_format
from deltaimg.bundle.manifest import CONFIG_PAYLOAD, MAX_LAYERS, MAX_PAYLOADS
from deltaimg.delta import recipe as lf
from deltaimg.errors import BundleFormatError, ImageReadError, IntegrityError, OutputError
from deltaimg.delta.recipe import Chunk, Record, RecordWriter, Segment, Span
from tests.memory import MINUTE, Outcome, measured
from tests.conftest import run_cli

BUDGET = 512 << 20  # apply's memory budget, as in test_resources.py
FORMAT, INTEGRITY = BundleFormatError.exit_code, IntegrityError.exit_code
FAKE_DIFF_ID = "sha256:" + "ab" * 32  # a layer no recipe here rebuilds
MiB = 1 << 20

# --------------------------------------------------------------------------- forging


def layer_tar(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()


def write_signed(path: Path, manifest_json: bytes, payload_area: bytes, private) -> Path:
    """A bundle file around the manifest text ``manifest_json`` exactly as given (compressed as
    bundles store it), signed by ``private``."""
    stored = zstd_ref.compress(manifest_json, level=1, dictionary=bundle_format.MANIFEST_DICTIONARY)
    signature = bundle_format.signature_block(signing.sign(private, stored))
    path.write_bytes(bundle_format.MAGIC + bundle_format.U32.pack(1) + bundle_format.U32.pack(len(stored))
                     + stored + bundle_format.U32.pack(len(signature)) + signature + payload_area)
    return path


def forge(path: Path, manifest: dict, payloads: list[tuple[str, bytes]], private, base_config: bytes | None = None) -> Path:
    """A signed bundle of ``manifest`` plus a correct payload table for ``payloads``; with
    ``base_config``, the payload named config is coded against it as make codes it."""
    if base_config is not None:
        payloads = [(name, zstd_ref.compress(data, prefix=base_config) if name == CONFIG_PAYLOAD else data)
                    for name, data in payloads]
    area = b"".join(d for _, d in payloads)
    manifest = {"payloads": [{"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                             for name, data in payloads], **manifest}
    return write_signed(path, bundle_format.canonical_json(manifest), area, private)


def delta_payload(chunks: list[Chunk], frames: list[bytes], records: list[Record]) -> bytes:
    """A layer delta payload: the recipe (chunk table and records) and the chunk frames."""
    writer = RecordWriter()
    for record in records:
        writer.add(record)
    return recipe_payload(lf.encode_recipe(chunks, bytes(writer.out))) + b"".join(frames)


def recipe_payload(recipe: bytes) -> bytes:
    frame = zstd_ref.compress(recipe, level=1)
    return lf.pack_header(len(recipe), len(frame)) + frame


def zeros_frame(size: int) -> bytes:
    return zstd_ref.compress(bytes(size), level=1)


@dataclass
class Forger:
    """A base image archive, and hostile bundles against it signed by the trusted key."""

    dir: Path
    private: object
    public: str
    base_layer: bytes
    base_archive: str = ""
    count: int = 0
    out_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.base_config = image_config([digest(self.base_layer)])
        self.base_archive = str(self.dir / "base.tar")
        with open(self.base_archive, "wb") as out:
            archivewriter.write_image(out, self.base_config, ["hostile/app:1"],
                                      [(digest(self.base_layer), len(self.base_layer), lambda w: w(self.base_layer))])
        self.out_dir = self.dir / "out"
        self.out_dir.mkdir()

    def manifest(self, target_config: bytes, layers: list[dict], **changes) -> dict:
        manifest = {
            "tool": "forged", "created": "2024-01-01T00:00:00Z",
            "base": {"image_id": digest(self.base_config), "tags": ["hostile/app:1"], "created": None},
            "target": {"image_id": digest(target_config), "tags": ["hostile/app:2"], "created": None},
            "layers": layers,
        }
        manifest.update(changes)
        return manifest

    def path(self) -> Path:
        self.count += 1
        return self.dir / f"hostile-{self.count}.dimg"

    def delta_bundle(self, payload: bytes, size: int = 4096) -> Path:
        """One target layer, rebuilt from ``payload``, declared ``size`` bytes."""
        config = image_config([FAKE_DIFF_ID])
        layers = [{"diff_id": FAKE_DIFF_ID, "size": size, "method": "delta", "payload": "layer-0"}]
        return forge(self.path(), self.manifest(config, layers), [("layer-0", payload), ("config", config)], self.private,
                     self.base_config)


@pytest.fixture(scope="module")
def forger(keypair, tmp_path_factory) -> Forger:
    base_layer = layer_tar([("etc/hosts", b"127.0.0.1 localhost\n" * 40), ("bin/tool", os.urandom(20_000)),
                            ("srv/readme", b"hello\n")])
    return Forger(tmp_path_factory.mktemp("hostile"), signing.load_private(keypair[0]), keypair[1], base_layer)


def apply_measured(forger: Forger, bundle: Path, output: Path | None = None) -> Outcome:
    """Run ``deltaimg apply BUNDLE --base BASE -o OUT``."""
    output = output or forger.out_dir / "new.tar"
    return measured("apply", str(bundle), "--trust", forger.public, "--base", forger.base_archive, "-o", str(output), "--quiet",
                    timeout=MINUTE)


def assert_refused(outcome: Outcome, code: int, reason: str, forger: Forger, peak: int = BUDGET) -> None:
    assert outcome.returncode == code, outcome.stderr
    assert outcome.stderr.startswith("deltaimg: error: ") and outcome.stderr.count("\n") == 1, outcome.stderr
    assert reason in outcome.stderr, outcome.stderr
    assert os.listdir(forger.out_dir) == [], "apply left output or temporary files behind"
    assert outcome.peak_rss < peak, f"apply peaked at {outcome.peak_rss >> 20} MiB"


# --------------------------------------------------------------------------- control


def test_control_a_forged_bundle_that_is_honest_applies(forger, tmp_path):
    """The forging itself is sound: an honest forged bundle (the base's own layer, rebuilt from a
    literal recipe) applies, so the refusals below are about what the bundles ask for."""
    layer = forger.base_layer
    config = image_config([digest(layer)])
    frame = zstd_ref.compress(layer)
    payload = delta_payload([Chunk(len(layer), len(frame))], [frame],
                            [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=0, size=len(layer), trailer=True)])
    layers = [{"diff_id": digest(layer), "size": len(layer), "method": "delta", "payload": "layer-0"}]
    bundle = forge(forger.path(), forger.manifest(config, layers), [("layer-0", payload), ("config", config)], forger.private,
                   forger.base_config)
    output = tmp_path / "new.tar"
    outcome = apply_measured(forger, bundle, output=output)
    assert outcome.returncode == 0, outcome.stderr
    with tarfile.open(output) as tar:
        assert tar.extractfile(f"{digest(layer)[7:]}/layer.tar").read() == layer


# --------------------------------------------------------------------------- more bytes than declared


def test_a_layer_that_decompresses_far_beyond_its_declared_size_is_stopped_while_streaming(forger):
    chunk = 64 * MiB  # 16 chunks of zeros: 1 GiB of literal bytes from a few KiB of bundle
    frame = zeros_frame(chunk)
    payload = delta_payload([Chunk(chunk, len(frame))] * 16, [frame] * 16,
                            [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=16 * chunk - 512)])
    outcome = apply_measured(forger, forger.delta_bundle(payload, size=4096))
    assert_refused(outcome, INTEGRITY, "rebuilt larger than its recorded 4096 bytes", forger)


def test_a_chunk_frame_that_holds_more_than_its_chunk_declares_is_refused(forger):
    frame = zeros_frame(MiB + MiB // 2)
    payload = delta_payload([Chunk(MiB, len(frame))], [frame], [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=1)])
    outcome = apply_measured(forger, forger.delta_bundle(payload))
    assert_refused(outcome, INTEGRITY, f"not the {MiB} recorded", forger)


def test_a_zstd_frame_that_asks_for_a_huge_window_is_refused(forger):
    # Frame header by hand: no content size, window descriptor 2^31 (exponent 21), one raw block.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0x00, 21 << 3]) + bytes([0x09, 0, 0]) + b"x"
    payload = delta_payload([Chunk(1, len(frame))], [frame], [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=1)])
    outcome = apply_measured(forger, forger.delta_bundle(payload))
    assert_refused(outcome, INTEGRITY, "too much memory", forger, peak=128 * MiB)


def test_a_recipe_as_large_as_allowed_stays_within_the_memory_budget(forger):
    outcome = apply_measured(forger, forger.delta_bundle(recipe_payload(bytes(lf.MAX_RECIPE_BYTES))))
    assert_refused(outcome, FORMAT, "unknown version", forger)


def test_a_recipe_declared_larger_than_allowed_is_refused_before_decoding(forger):
    frame = zeros_frame(MiB)
    payload = lf.pack_header(lf.MAX_RECIPE_BYTES + 1, len(frame)) + frame
    outcome = apply_measured(forger, forger.delta_bundle(payload))
    assert_refused(outcome, FORMAT, "implausibly large", forger, peak=128 * MiB)


def test_binary_delta_streams_out_of_proportion_to_what_they_make_are_refused_before_decoding(forger):
    chunk = 64 * MiB
    frame = zeros_frame(chunk)
    segment = Segment(lf.SEGMENT_BSDIFF, target_len=0, base_start=0, base_len=10, bsdiff_lens=(chunk, 0, 0))
    payload = delta_payload([Chunk(chunk, len(frame))], [frame],
                            [Record(lf.PRE_PARTNER, lf.DATA_DELTA, partner=(0, 1), segments=[segment])])
    outcome = apply_measured(forger, forger.delta_bundle(payload))
    assert_refused(outcome, FORMAT, "larger than the bytes it makes", forger, peak=128 * MiB)


# --------------------------------------------------------------------------- absurd numbers in recipes

BIG = 1 << 50


def _chunked(spans: list[Span]) -> tuple[list[Chunk], list[bytes]]:
    frame = zstd_ref.compress(b"x")
    return [Chunk(1, len(frame), spans)], [frame]


def _varint(value: int) -> bytes:
    out = bytearray()
    varint.put(out, value)
    return bytes(out)


def _one(record: Record) -> bytes:
    return delta_payload([], [], [record])


RECIPES: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "chunk count": (lambda: recipe_payload(bytes([1]) + b"\xff\xff\xff\xff\xff\xff\x7f"), FORMAT, "too many chunks"),
    "chunk literal length": (lambda: delta_payload([Chunk(BIG, 9)], [bytes(9)], []), FORMAT, "oversized chunk"),
    "chunk frame length": (lambda: delta_payload([Chunk(1, BIG)], [bytes(9)], []), FORMAT, "oversized chunk"),
    "span length": (lambda: delta_payload([Chunk(1, 9, [Span(0, 0, 1, 0, BIG)])], [bytes(9)], []), FORMAT,
                    "oversized reference"),
    "chunk frame of no bytes": (lambda: delta_payload([Chunk(1, 0)], [bytes(9)], []), FORMAT,
                                "chunk frames its payload does not hold"),
    "chunk frames past the payload": (lambda: delta_payload([Chunk(1, 5), Chunk(1, 5)], [bytes(9)], []), FORMAT,
                                      "chunk frames its payload does not hold"),
    "span layer": (lambda: delta_payload(*_chunked([Span(99, 0, 1, 0, 10)]), [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=1)]),
                   FORMAT, "base layer 99, which the base lacks"),
    "span entry": (lambda: delta_payload(*_chunked([Span(0, BIG, 1, 0, 10)]), [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=1)]),
                   FORMAT, f"entry {BIG} of base layer 0, which the base lacks"),
    "span start": (lambda: delta_payload(*_chunked([Span(0, 1, 1, BIG, 10)]), [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=1)]),
                   FORMAT, "refers past a base entry's end"),
    "partner layer": (lambda: _one(Record(lf.PRE_PARTNER, lf.DATA_PARTNER, partner=(7, 0))), FORMAT, "base layer 7"),
    "identical-content entry": (lambda: _one(Record(lf.PRE_PARTNER, lf.DATA_REF, partner=(0, 0), ref=(0, BIG))),
                                FORMAT, "which the base lacks"),
    "header edit past the header": (lambda: _one(Record(lf.PRE_EDITED, lf.DATA_PARTNER, partner=(0, 0), edits=[(BIG, 1)])),
                                    FORMAT, "runs past the header"),
    "header edit count": (lambda: recipe_payload(bytes([1, 0, lf.PRE_EDITED | lf.HAS_PARTNER, 0, 0]) + _varint(lf.MAX_EDITS)),
                          FORMAT, "ends early"),
    "header edit count beyond the cap": (lambda: recipe_payload(bytes([1, 0, lf.PRE_EDITED | lf.HAS_PARTNER, 0, 0])
                                                                + _varint(lf.MAX_EDITS + 1)),
                                         FORMAT, "too many header edits"),
    "empty header edits": (lambda: recipe_payload(bytes([1, 0, lf.PRE_EDITED | lf.HAS_PARTNER, 0, 0]) + _varint(lf.MAX_EDITS)
                                                  + bytes(2 * lf.MAX_EDITS)),
                           FORMAT, "an empty header edit"),
    "segment count": (lambda: recipe_payload(bytes([1, 0, (lf.DATA_DELTA << 2) | lf.HAS_PARTNER, 0, 0]) + _varint(512)
                                       + b"\xff\xff\x7f"),
                      FORMAT, "too many delta segments"),
    "binary delta size": (lambda: _one(Record(lf.PRE_PARTNER, lf.DATA_DELTA, partner=(0, 1),
                                              segments=[Segment(lf.SEGMENT_BSDIFF, BIG, 0, 10, (1, 1, 1))])),
                          FORMAT, "larger than any deltaimg writes"),
    "delta segment past the base file": (lambda: _one(Record(lf.PRE_PARTNER, lf.DATA_DELTA, partner=(0, 1),
                                                            segments=[Segment(lf.SEGMENT_LITERAL, 1, BIG, 1)])),
                                        FORMAT, "refers past its base file's end"),
    "literal payload size": (lambda: _one(Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=512, size=BIG)), INTEGRITY,
                             "needs more literal bytes"),
    "entry header of no bytes": (lambda: _one(Record(lf.PRE_LITERAL, lf.DATA_LITERAL, size=1)), FORMAT,
                                 "entry header that is not whole tar blocks"),
    "entry header of part of a block": (lambda: _one(Record(lf.PRE_LITERAL, lf.DATA_LITERAL, pre_len=511, size=1)), FORMAT,
                                        "entry header that is not whole tar blocks"),
    "record flags": (lambda: recipe_payload(bytes([1, 0, lf.HAS_PARTNER | lf.NEXT_PARTNER])), FORMAT, "invalid record"),
    "next partner of none": (lambda: recipe_payload(bytes([1, 0, lf.NEXT_PARTNER])), FORMAT, "partner after none"),
    "overlong number": (lambda: recipe_payload(bytes([1]) + b"\xff" * 11), FORMAT, "invalid number"),
}


@pytest.mark.parametrize("case", RECIPES)
def test_absurd_numbers_in_a_recipe_are_refused(forger, case):
    make_payload, code, reason = RECIPES[case]
    outcome = apply_measured(forger, forger.delta_bundle(make_payload()))
    assert_refused(outcome, code, reason, forger, peak=128 * MiB)


def test_a_small_bundle_listing_sixty_million_header_edits_stays_within_the_budget(forger):
    """Some 4 KiB of bundle: a recipe of one record claiming 60 million empty header edits, which
    held as a list took 4.5 GB. The count is refused before a single edit is read."""
    bundle = forger.delta_bundle(recipe_payload(bytes([1, 0, lf.PRE_EDITED | lf.HAS_PARTNER, 0, 0])
                                                + _varint(60_000_000) + bytes(120_000_000)))
    assert bundle.stat().st_size < 64 * 1024
    assert_refused(apply_measured(forger, bundle), FORMAT, "layer recipe has too many header edits", forger)


def test_a_small_bundle_listing_forty_four_million_records_that_write_nothing_is_refused_at_the_first(forger):
    """Records of no header and no payload wrote nothing, so the layer size never stopped them:
    44 million of them (a few KiB compressed) took 154 s. Every record but the trailer writes a
    header of whole tar blocks, so the layer's size bounds the work."""
    empty = bytes([lf.PRE_LITERAL | (lf.DATA_LITERAL << 2), 0, 0])  # flags, header length 0, payload size 0
    bundle = forger.delta_bundle(recipe_payload(bytes([1, 0]) + empty * 44_000_000))
    assert bundle.stat().st_size < 256 * 1024
    assert_refused(apply_measured(forger, bundle), FORMAT, "layer recipe has an entry header that is not whole tar "
                   "blocks: the bundle is damaged", forger)


def test_a_small_bundle_listing_a_million_chunks_is_refused_before_the_table_is_read(forger):
    """A chunk table's count was believed: a million chunks (a few KiB compressed) made a 588 MiB
    table. Each chunk's frame is at least a byte of the payload, so the count is refused at once."""
    chunk = bytes([1, 1, 0])  # literal length 1, frame length 1, no spans
    bundle = forger.delta_bundle(recipe_payload(bytes([1]) + _varint(1_000_000) + chunk * 1_000_000))
    assert bundle.stat().st_size < 64 * 1024
    assert_refused(apply_measured(forger, bundle), FORMAT, "layer recipe lists more chunks than its payload holds: the "
                   "bundle is damaged", forger, peak=128 * MiB)


def test_a_chunk_table_as_long_as_its_payload_stays_within_the_budget(forger):
    """The longest table a payload allows: a chunk per byte of frames, 2^20 of them (the cap), and
    no entry record after them."""
    chunk = bytes([1, 1, 0])
    count = lf.MAX_SPANS
    bundle = forger.delta_bundle(recipe_payload(bytes([1]) + _varint(count) + chunk * count) + bytes(count))
    assert_refused(apply_measured(forger, bundle), FORMAT, "layer recipe ends early: the bundle is damaged", forger)


def test_a_binary_delta_whose_control_triples_make_nothing_is_refused_at_once(forger):
    """bsdiff control triples of (0, 0, 0) make no byte: as many as the streams' cap allows looped
    for minutes. Every triple must make bytes, and together exactly the file."""
    made = 4000
    control = bytes(24 * (made + 1))
    frame = zstd_ref.compress(control, level=1)
    segment = Segment(lf.SEGMENT_BSDIFF, target_len=made, base_start=0, base_len=10, bsdiff_lens=(len(control), 0, 0))
    payload = delta_payload([Chunk(len(control), len(frame))], [frame],
                            [Record(lf.PRE_PARTNER, lf.DATA_DELTA, partner=(0, 1), segments=[segment])])
    assert_refused(apply_measured(forger, forger.delta_bundle(payload, size=8192)), INTEGRITY,
                   "a binary delta's control stream makes nothing or more than its file: the bundle is damaged", forger,
                   peak=128 * MiB)


def test_seek_only_triples_as_bsdiff_writes_them_are_taken_more_of_them_are_not():
    """bsdiff4 writes a (0, 0, seek) triple between two matches now and then (35 of 1083 in the
    benchmark's libssl3 delta); a control stream with more of them than triples making bytes is forged."""
    triple = bsdiff._TRIPLE.pack
    bsdiff.check_control(triple(10, 0, 4) + triple(0, 0, 5) + triple(6, 0, 0), 16)
    with pytest.raises(IntegrityError, match="makes nothing or more than its file"):
        bsdiff.check_control(triple(10, 0, 4) + triple(0, 0, 5) + triple(0, 0, 5) + triple(0, 0, 5) + triple(6, 0, 0), 16)


# --------------------------------------------------------------------------- absurd manifests


def _target(forger: Forger, diff_ids: list[str] | None = None) -> bytes:
    return image_config(diff_ids if diff_ids is not None else [digest(forger.base_layer)])


def _base_layer(forger: Forger, **changes) -> dict:
    return {"diff_id": digest(forger.base_layer), "size": len(forger.base_layer), "method": "base", "base_layer": 0,
            **changes}


def _signed(forger: Forger, manifest: dict, payloads: list[tuple[str, bytes]] | None = None) -> Path:
    config = _target(forger)
    return forge(forger.path(), manifest, payloads if payloads is not None else [("config", config)], forger.private,
                 forger.base_config)


MANIFESTS: dict[str, tuple[Callable[[Forger], Path], int, str]] = {
    "nested ten thousand deep": (lambda g: write_signed(g.path(), b"[" * 10_000 + b"]" * 10_000, b"", g.private),
                                 FORMAT, "not valid JSON"),
    "too many payloads": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g)]),
                                            [(f"p{i}", b"") for i in range(MAX_PAYLOADS + 1)]),
                          FORMAT, "not a deltaimg manifest"),
    "payload size as a float": (lambda g: write_signed(g.path(), bundle_format.canonical_json(
        {**g.manifest(_target(g), []), "payloads": [{"name": "config", "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1.0}]}),
        b"x", g.private), FORMAT, "payload list is malformed"),
    "a payload hash that is not one": (lambda g: write_signed(g.path(), bundle_format.canonical_json(
        {**g.manifest(_target(g), []), "payloads": [{"name": "config", "sha256": "../x", "size": 1}]}), b"x", g.private),
        FORMAT, "payload hash is malformed (payload config)"),
    "a payload without its hash": (lambda g: write_signed(g.path(), bundle_format.canonical_json(
        {**g.manifest(_target(g), []), "payloads": [{"name": "config", "size": 1}]}), b"x", g.private),
        FORMAT, "payload hash is malformed (payload config)"),
    "two payloads of one name": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g)]),
                                                   [("config", _target(g)), ("config", b"other")]),
                                 FORMAT, "payload list is malformed"),
    "a payload of 2^62 bytes": (lambda g: write_signed(g.path(), bundle_format.canonical_json(
        {**g.manifest(_target(g), []), "payloads": [{"name": "config", "sha256": hashlib.sha256(b"x").hexdigest(),
                                                      "size": 1 << 62}]}), b"x", g.private), FORMAT, "truncated"),
    "layers not a list": (lambda g: _signed(g, g.manifest(_target(g), {"0": _base_layer(g)})), FORMAT, "lacks its base, target or layers"),
    "base image id not a digest": (lambda g: _signed(g, {**g.manifest(_target(g), [_base_layer(g)]),
                                                         "base": {"image_id": {"a": 1}}}),
                                   FORMAT, "record of the base image is malformed"),
    "target image id a path": (lambda g: _signed(g, {**g.manifest(_target(g), [_base_layer(g)]),
                                                     "target": {"image_id": "sha256:" + "../" * 21 + "x"}}),
                               FORMAT, "record of the target image is malformed"),
    "a base layer the target config does not list there": (
        lambda g: forge(g.path(), g.manifest(image_config([FAKE_DIFF_ID]), [_base_layer(g)]),
                        [("config", image_config([FAKE_DIFF_ID]))], g.private, g.base_config),
        FORMAT, "layers do not match the target config"),
    "fewer layers than the target config lists": (
        lambda g: forge(g.path(), g.manifest(image_config([digest(g.base_layer)] * 2), [_base_layer(g)]),
                        [("config", image_config([digest(g.base_layer)] * 2))], g.private, g.base_config),
        FORMAT, "layers do not match the target config"),
    "a tag with a newline": (lambda g: _signed(g, {**g.manifest(_target(g), [_base_layer(g)]),
                                                   "target": {**g.manifest(_target(g), [])["target"], "tags": ["a\nb"]}}),
                             FORMAT, "target tags are malformed"),
    "target layer id a path": (lambda g: forge(g.path(), g.manifest(image_config(["sha256:" + "../" * 21 + "x"]), []),
                                               [("config", image_config(["sha256:" + "../" * 21 + "x"]))], g.private,
                                               g.base_config),
                               FORMAT, "no valid rootfs.diff_ids"),
    "a config that is not the target's": (lambda g: forge(g.path(), g.manifest(_target(g), [_base_layer(g)]),
                                                          [("config", _target(g) + b" ")], g.private, g.base_config),
                                          INTEGRITY, "does not match the target image ID"),
    "a config that decompresses beyond 16 MiB": (lambda g: forge(g.path(), g.manifest(_target(g), [_base_layer(g)]),
                                                                 [("config", bytes(17 * MiB))], g.private, g.base_config),
                                                 INTEGRITY, "more than the 16777216 bytes allowed"),
    "layer size negative": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, size=-1)])), FORMAT, "layer 0 is malformed"),
    "layer size true": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, size=True)])), FORMAT, "layer 0 is malformed"),
    "layer size 2^62": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, size=1 << 62)])), INTEGRITY,
                        f"not {1 << 62}"),
    "layer size 2^88": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, size=1 << 88)])), INTEGRITY,
                        f"not {1 << 88}"),
    "layer size 10^400": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, size=10 ** 400)])), INTEGRITY,
                          f"not {10 ** 400}"),
    "base layer out of range": (lambda g: _signed(g, g.manifest(_target(g), [_base_layer(g, base_layer=5)])),
                                FORMAT, "layer 0 is malformed"),
    "a repeat of another layer": (lambda g: forge(g.path(), g.manifest(image_config([digest(g.base_layer), FAKE_DIFF_ID]),
                                                                       [_base_layer(g), _base_layer(g, diff_id=FAKE_DIFF_ID, method="repeat", of=0)]),
                                                  [("config", image_config([digest(g.base_layer), FAKE_DIFF_ID]))], g.private,
                                                  g.base_config),
                                  FORMAT, "layer 1 is malformed"),
    "a repeat of a layer after it": (lambda g: forge(g.path(), g.manifest(image_config([digest(g.base_layer)] * 2),
                                                                          [_base_layer(g), _base_layer(g, method="repeat", of=5)]),
                                                     [("config", image_config([digest(g.base_layer)] * 2))], g.private,
                                                     g.base_config),
                                     FORMAT, "layer 1 is malformed"),
    "a delta without its payload": (lambda g: forge(g.path(), g.manifest(image_config([FAKE_DIFF_ID]),
                                                                         [{"diff_id": FAKE_DIFF_ID, "size": 1, "method": "delta", "payload": "nope"}]),
                                                    [("config", image_config([FAKE_DIFF_ID]))], g.private, g.base_config),
                                    FORMAT, "names no payload 'nope'"),
    "a config payload of 17 MiB": (lambda g: forge(g.path(), g.manifest(_target(g), [_base_layer(g)]),
                                                   [("config", bytes(17 * MiB))], g.private),
                                   FORMAT, "larger than any deltaimg writes"),
}


@pytest.mark.parametrize("case", MANIFESTS)
def test_absurd_signed_manifests_are_refused(forger, case):
    make_bundle, code, reason = MANIFESTS[case]
    assert_refused(apply_measured(forger, make_bundle(forger)), code, reason, forger)


# What inspect without --trust refuses, and the exact reason; it shows the other manifests (their
# flaws are for the checks after the signature, the payloads and the base image).
INSPECT_REFUSES = {
    "nested ten thousand deep": "the manifest is not valid JSON (maximum recursion depth exceeded while decoding a JSON "
                                "array from a unicode string)",
    "too many payloads": "the manifest is not a deltaimg manifest",
    "payload size as a float": "the manifest's payload list is malformed",
    "a payload hash that is not one": "the manifest's payload hash is malformed (payload config)",
    "a payload without its hash": "the manifest's payload hash is malformed (payload config)",
    "two payloads of one name": "the manifest's payload list is malformed",
    "layers not a list": "the manifest lacks its base, target or layers",
    "base image id not a digest": "the manifest's record of the base image is malformed",
    "target image id a path": "the manifest's record of the target image is malformed",
    "a tag with a newline": "the manifest's target tags are malformed",
    "layer size negative": "the manifest's layer 0 is malformed",
    "layer size true": "the manifest's layer 0 is malformed",
    "a repeat of another layer": "the manifest's layer 1 is malformed",
    "a repeat of a layer after it": "the manifest's layer 1 is malformed",
    "a delta without its payload": "the manifest names no payload 'nope'",
}


@pytest.mark.parametrize("case", MANIFESTS)
def test_inspect_without_a_trusted_key_reports_absurd_manifests_in_one_line(forger, case):
    """inspect without --trust reads what anyone could have written: it shows it, marked as not
    verified, or says in one line why it cannot, never a traceback."""
    make_bundle, _, _ = MANIFESTS[case]
    bundle = make_bundle(forger)
    result = measured("inspect", str(bundle), timeout=MINUTE)
    assert result.peak_rss < BUDGET
    if case in INSPECT_REFUSES:
        assert (result.returncode, result.stdout) == (FORMAT, "")
        assert result.stderr == f"deltaimg: error: {bundle}: {INSPECT_REFUSES[case]}\n"
    else:
        assert (result.returncode, result.stderr) == (0, "")
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"{bundle}: ") and lines[0].endswith(", format 1, made by forged at 2024-01-01T00:00:00Z")
        assert lines[1].endswith(": NOT verified (pass --trust KEY.pub to check)")


def test_inspect_shows_a_layer_size_no_float_holds(forger):
    """10^400 bytes: past what a float holds (human_size divided it: OverflowError)."""
    bundle = _signed(forger, forger.manifest(_target(forger), [_base_layer(forger, size=10 ** 400)]))
    for trust in ([], ["--trust", forger.public]):
        outcome = measured("inspect", str(bundle), *trust, timeout=MINUTE)
        assert outcome.returncode == 0 and outcome.stderr == "", outcome.stderr
        assert outcome.peak_rss < BUDGET
        lines = outcome.stdout.splitlines()
        assert "  layer 0: over 1000 TB referenced: base layer 0" in lines
        assert lines[-1].startswith("  bundle ") and " vs full image over 1000 TB (docker save): " in lines[-1]


def test_verify_of_as_many_layers_as_a_manifest_may_hold_ends_within_a_minute(forger):
    """Each of 10,000 layers (the most a manifest may list) names its own (empty) payload: looking
    each one up must not scan and sum the whole payload table again (20,000 x 20,000 steps once
    took verify past 120 s)."""
    count = MAX_LAYERS
    diff_ids = [digest(str(i).encode()) for i in range(count)]
    layers = [{"diff_id": d, "size": 0, "method": "delta", "payload": f"layer-{i}"} for i, d in enumerate(diff_ids)]
    config = image_config(diff_ids)
    bundle = forge(forger.path(), forger.manifest(config, layers), [*((f"layer-{i}", b"") for i in range(count)),
                                                                     ("config", config)], forger.private, forger.base_config)
    outcome = measured("verify", str(bundle), "--trust", forger.public, timeout=MINUTE)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith(f"{bundle}: OK, signed by key ") and outcome.peak_rss < BUDGET


def _values(count: int) -> bytes:
    """A manifest that is valid JSON and holds ``count`` empty objects (3 bytes each)."""
    return b'{"payloads":[],"x":[' + b"{}," * (count - 1) + b"{}]}"


def test_a_manifest_of_millions_of_values_is_refused_before_parsing(forger):
    """64 MiB of ``{},`` would take Python some 1.8 GB to parse."""
    path = write_signed(forger.path(), _values((bundle_format.MAX_MANIFEST - 100) // 3), b"", forger.private)
    assert_refused(apply_measured(forger, path), FORMAT, "holds more values than any deltaimg writes", forger)


def test_inspect_of_an_unverified_manifest_of_millions_of_values_stays_within_the_budget(forger):
    """inspect without --trust parses what anyone could have written."""
    path = write_signed(forger.path(), _values((bundle_format.MAX_MANIFEST - 100) // 3), b"", forger.private)
    outcome = measured("inspect", str(path))
    assert outcome.returncode == FORMAT and "holds more values" in outcome.stderr, outcome.stderr
    assert outcome.peak_rss < BUDGET


def test_a_manifest_length_beyond_the_limit_is_refused_unread(forger):
    path = forger.path()
    path.write_bytes(bundle_format.MAGIC + bundle_format.U32.pack(1) + bundle_format.U32.pack(bundle_format.MAX_MANIFEST + 1)
                     + bytes(100))
    assert_refused(apply_measured(forger, path), FORMAT, "bad manifest length", forger, peak=128 * MiB)


# --------------------------------------------------------------------------- the wrong target


def test_a_base_whose_layer_bytes_were_altered_is_refused_and_nothing_written(forger, tmp_path):
    """Same config (so the same image ID), other layer bytes: the rebuilt layer cannot match, and the
    error names the base as the damaged input."""
    layer = forger.base_layer
    config = image_config([digest(layer)])
    trailer = layer[layer.rindex(b"hello\n") + 512:]  # the end-of-archive blocks after the last file
    frame = zstd_ref.compress(trailer)
    payload = delta_payload([Chunk(len(trailer), len(frame))], [frame],
                            [Record(lf.PRE_PARTNER, lf.DATA_PARTNER, partner=(0, i)) for i in range(3)]
                            + [Record(lf.PRE_LITERAL, lf.DATA_LITERAL, size=len(trailer), trailer=True)])
    bundle = forge(forger.path(), forger.manifest(config, [{"diff_id": digest(layer), "size": len(layer),
                                                           "method": "delta", "payload": "layer-0"}]),
                   [("layer-0", payload), ("config", config)], forger.private, forger.base_config)
    damaged = tmp_path / "base-damaged.tar"
    data = Path(forger.base_archive).read_bytes()
    at = data.index(b"localhost")
    damaged.write_bytes(data[:at] + b"LOCALHOST" + data[at + 9:])
    process = run_cli("apply", str(bundle), "--trust", forger.public, "--base", str(damaged), "-o", str(forger.out_dir / "x.tar"))
    assert process.returncode == ImageReadError.exit_code  # the base is damaged, not the bundle: it says which
    assert process.stderr == (f"deltaimg: error: {damaged}: base layer 0 does not hash to its diff_id "
                              f"{digest(layer)[:19]}; the base image is damaged: export it again\n")
    assert os.listdir(forger.out_dir) == []


# --------------------------------------------------------------------------- where apply writes


def test_an_output_that_is_a_dangling_symlink_is_neither_followed_nor_replaced_without_force(forger, example_bundle,
                                                                                            example_pair, keypair, tmp_path):
    link, target = tmp_path / "new.tar", tmp_path / "elsewhere" / "planted"
    (tmp_path / "elsewhere").mkdir()
    link.symlink_to(target)
    args = ["apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(link)]
    refused = run_cli(*args)
    assert refused.returncode == OutputError.exit_code and "exists" in refused.stderr
    assert link.is_symlink() and not target.exists()
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not link.is_symlink() and link.is_file() and not target.exists()  # the link was replaced, not followed


def test_rebuilt_archives_name_their_members_by_digest_only(example_bundle, example_pair, keypair, tmp_path):
    out = tmp_path / "new.tar"
    assert run_cli("apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out)).returncode == 0
    with tarfile.open(out) as tar:
        for name in tar.getnames():
            assert not name.startswith("/") and ".." not in name.split("/"), name


# --------------------------------------------------------------------------- the engine path


def test_a_recipe_naming_a_base_layer_the_engine_image_lacks_changes_nothing(docker_client, engine_resources, keypair, tmp_path):
    """Against the engine, the base layers a bundle reads are exported first: a reference to a
    layer the base does not have must be refused as the bundle's fault, with the engine untouched."""

    base_id = engine_resources.build("base")
    base = docker_client.api.inspect_image(base_id)
    diff_ids = base["RootFS"]["Layers"]
    config = image_config([*diff_ids, FAKE_DIFF_ID])
    payload = delta_payload([], [], [Record(lf.PRE_PARTNER, lf.DATA_PARTNER, partner=(len(diff_ids) + 5, 0), trailer=True)])
    layers = [{"diff_id": d, "size": 1, "method": "base", "base_layer": i} for i, d in enumerate(diff_ids)]
    layers.append({"diff_id": FAKE_DIFF_ID, "size": 4096, "method": "delta", "payload": "layer-x"})
    manifest = {"tool": "forged", "created": "2024-01-01T00:00:00Z",
                "base": {"image_id": base_id, "tags": [], "created": None},
                "target": {"image_id": digest(config), "tags": [engine_resources.name("target") + ":test"], "created": None},
                "layers": layers}
    bundle = forge(tmp_path / "b.dimg", manifest, [("layer-x", payload), ("config", config)],
                   signing.load_private(keypair[0]), DockerEngine(docker_client).read_config(base_id))
    images_before = {i["Id"] for i in docker_client.api.images(all=True, filters={"reference": engine_resources.prefix + "*"})}
    result = run_cli("apply", str(bundle), "--trust", keypair[1])
    assert result.returncode == FORMAT and "which the base lacks" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert not any(i["Id"] == digest(config) for i in docker_client.api.images(all=True))
    assert {i["Id"] for i in docker_client.api.images(all=True, filters={"reference": engine_resources.prefix + "*"})} == images_before


@pytest.mark.parametrize("command", ["verify", "inspect", "apply"])
def test_a_fifo_given_as_the_bundle_is_refused_at_once_instead_of_waiting_for_a_writer(command, example_pair, keypair, tmp_path):
    fifo = tmp_path / "app.dimg"
    os.mkfifo(fifo)
    extra = {"verify": ["--trust", keypair[1]], "inspect": [],
             "apply": ["--trust", keypair[1], "--base", example_pair[0], "-o", str(tmp_path / "out.tar")]}[command]
    result = measured(command, str(fifo), *extra)
    assert result.returncode == BundleFormatError.exit_code
    assert result.stderr == f"deltaimg: error: {fifo} is not a regular file; give the bundle file itself\n"
    assert sorted(os.listdir(tmp_path)) == ["app.dimg"]


def test_a_compressed_file_delta_that_declares_huge_content_is_refused_before_decompressing(forger):
    """An inside segment (delta/inside.py) names a base file and declares 1 TiB of target content
    for a 4 KiB file: refused from the declared sizes, before anything is decompressed."""
    blob = bytearray()
    for pieces in ([(0, 0, 20_000, 20_000)], [(2, 6, 4096, 1 << 40)]):  # the base raw; the target xz
        varint.put(blob, len(pieces))
        for piece in pieces:
            for n in piece:
                varint.put(blob, n)
    blob += bytes(4096 - len(blob))
    header = bytes(512)
    literal = header + bytes(blob)
    frame = zstd_ref.compress(literal)
    record = Record(lf.PRE_LITERAL, lf.DATA_DELTA, partner=(0, 1), pre_len=512,
                    segments=[Segment(lf.SEGMENT_INSIDE, 4096, 0, 20_000, (len(blob), 0, 0))])
    payload = delta_payload([Chunk(len(literal), len(frame))], [frame], [record])
    outcome = apply_measured(forger, forger.delta_bundle(payload, size=8192))
    assert_refused(outcome, FORMAT, "declares 1099511627776 bytes of content for a file of 4096 bytes", forger)
