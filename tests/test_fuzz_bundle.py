"""Fuzzing the bundle reader and the rebuild: whatever a bundle holds, opening it (open_bundle),
reading what it rebuilds (read_rebuild), rebuilding its layers as the engine path does, from a streamed base
(base_references, fetch_entries), and rebuilding the target (apply_to_archive) either works or fails with one of
deltaimg's own errors, the ones each test names; on failure no output and no temporary file is left.
A damaged file never applies; a bundle signed again (as a stolen key could) applies only if what it
rebuilds is exactly the target image. Each case runs under a time and a memory cap.

Four kinds of input, from a real bundle of a small pair (bsdiff, zstd deltas, edited headers):
the file's bytes damaged (the signature then fails: the shallow case), and, signed again with the
trusted key as a stolen key could, a manifest with one value replaced by arbitrary JSON, a layer
recipe with damaged bytes or one number replaced, or damaged chunk frames.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deltaimg.codec import bsdiff, zstd_ref

from deltaimg.bundle import signing

from deltaimg.codec import varint
from deltaimg.bundle import format as bundle_format
from deltaimg.delta import recipe as lf
from deltaimg.apply.archive import apply_to_archive
from deltaimg.apply.rebuild import read_rebuild
from deltaimg.bundle.manifest import Method, parse_manifest
from deltaimg.bundle.reader import open_bundle, read_header
from deltaimg.delta.decoder import base_references, rebuild_layer
from deltaimg.errors import (BaseMismatchError, BundleFormatError, DeltaimgError, DowngradeError, IntegrityError,
                             SignatureError)
from deltaimg.images import open_image
from deltaimg.images.model import Layer
from deltaimg.make.build import make_bundle
from deltaimg.delta.base_content import BaseContent
from tests import imagefactory as f
from tests.conftest import archive_image, assert_same_image
from tests.test_fuzz_images import damage, json_values, replace_one_value
from tests.memory import MINUTE, capped
from tests.test_hostile_bundles import write_signed

# deadline: each case's time cap as hypothesis checks it (a case takes some 100 ms); capped() also
# interrupts one that hangs, and caps its memory.
FUZZ = settings(max_examples=250, deadline=datetime.timedelta(seconds=30),
                suppress_health_check=[HealthCheck.function_scoped_fixture])
UNSIGNED = (BundleFormatError, SignatureError, IntegrityError)  # what damage to the signed file can give
INTERESTING = [0, 1, 2, 3, 7, 127, 128, 511, 512, 4096, 65535, 1 << 20, (1 << 26) + 1, (1 << 31) - 1, 1 << 40, (1 << 63) - 1]


@dataclass(frozen=True)
class Subject:
    """A real bundle, its parts, the base it applies to, and the keys."""

    bundle: bytes
    manifest: dict
    payloads: dict[str, bytes]
    base: str
    target_config: bytes  # the config of the image the bundle rebuilds
    private: object
    trusted: list

    def signed(self, manifest_bytes: bytes, area: bytes) -> bytes:
        """A bundle of exactly these manifest bytes and payload area, signed by the trusted key."""
        with tempfile.TemporaryDirectory() as tmp:
            return write_signed(Path(tmp) / "b.dimg", manifest_bytes, area, self.private).read_bytes()

    def with_payloads(self, payloads: dict[str, bytes]) -> bytes:
        """The bundle with these payloads instead, its payload table made to match, signed."""
        area = b"".join(payloads[r["name"]] for r in self.manifest["payloads"])
        table = [{"name": r["name"], "sha256": hashlib.sha256(payloads[r["name"]]).hexdigest(),
                  "size": len(payloads[r["name"]])} for r in self.manifest["payloads"]]
        manifest = {**self.manifest, "payloads": table}
        return self.signed(bundle_format.canonical_json(manifest), area)

    @property
    def payload_area(self) -> bytes:
        return b"".join(self.payloads[r["name"]] for r in self.manifest["payloads"])


def _pair(tmp: Path) -> tuple[str, str]:
    binary = bytes((i * 7919 + (i >> 9)) % 251 for i in range(40_000))
    patched = binary[:15_000] + b"\x90" * 300 + binary[15_000:30_000] + binary[30_500:]
    text = b"".join(b"line %d of the configuration\n" % i for i in range(300))
    v1 = f.write_layer(tmp / "v1.layer", f.complete_tree([
        f.file("usr/bin/tool", binary, mode=0o755), f.file("etc/app.conf", text), f.symlink("usr/bin/t", "tool"),
        f.file("usr/share/doc/README", b"read me\n" * 50), f.file("srv/data.bin", os.urandom(3000))]))
    v2 = f.write_layer(tmp / "v2.layer", f.complete_tree([
        f.file("usr/bin/tool", patched, mode=0o755, mtime=f.UPGRADE_MTIME),
        f.file("etc/app.conf", text.replace(b"line 150", b"LINE 150"), mtime=f.UPGRADE_MTIME),
        f.symlink("usr/bin/t", "tool"), f.file("usr/share/doc/README", b"read me\n" * 50, mtime=f.UPGRADE_MTIME),
        f.file("srv/new.txt", b"new file\n")], mtime=f.UPGRADE_MTIME))
    old = f.write_docker_archive(tmp / "v1.tar", [f.ImageSpec([v1], ["fuzz/app:1"])])[0].path
    new = f.write_docker_archive(tmp / "v2.tar", [f.ImageSpec([v2], ["fuzz/app:2"])])[0].path
    return str(old), str(new)


@pytest.fixture(scope="module")
def subject(keypair, tmp_path_factory) -> Subject:
    tmp = tmp_path_factory.mktemp("fuzz-bundle")
    old, new = _pair(tmp)
    path = str(tmp / "b.dimg")
    private = signing.load_private(keypair[0])
    manifest = make_bundle(open_image(old), open_image(new), path, private)
    stats = [layer["stats"] for layer in manifest["layers"] if layer["method"] == "delta"]
    assert sum(s["bsdiff"] for s in stats) >= 1 and sum(s["headers_from_old"] for s in stats) >= 1
    manifest_bytes, _, start, _ = read_header(path)
    data = Path(path).read_bytes()
    parsed = json.loads(bundle_format.manifest_json(manifest_bytes, path))
    records = parse_manifest(parsed, path).payloads
    payloads = {p.name: data[start + p.offset: start + p.offset + p.size] for p in records}
    return Subject(data, parsed, payloads, old, archive_image(new)[0], private, [signing.load_public(keypair[1])])


def expect_only_own_errors(subject: Subject, bundle: bytes, expected: tuple[type[DeltaimgError], ...],
                           may_apply: bool = True) -> str:
    """Open, plan, list the base layers read and rebuild, under the caps; return what happened.

    A refusal must be one of ``expected``; an apply must be allowed (``may_apply``) and rebuild the
    target exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "b.dimg", Path(tmp) / "out" / "new.tar"
        path.write_bytes(bundle)
        out.parent.mkdir()
        try:
            with capped(MINUTE):
                opened = open_bundle(str(path), subject.trusted)
                plan = read_rebuild(opened)
                deltas = [layer.payload for layer in plan.layers if layer.method is Method.DELTA]
                rebuild_from_the_engine_path(opened, deltas, subject.base, tmp)
                apply_to_archive(opened, open_image(subject.base), str(out))
        except DeltaimgError as exc:
            assert isinstance(exc, expected), f"refused with {type(exc).__name__}, not one of {expected}: {exc}"
            assert "\n" not in str(exc)
            assert os.listdir(out.parent) == [], "a refused bundle left output behind"
            return f"refused: {type(exc).__name__}"
        assert may_apply, "a damaged bundle applied"
        assert_same_image(str(out), subject.target_config)
        return "applied"


def rebuild_from_the_engine_path(opened, deltas: list[str], base_archive: str, tmp: str) -> None:
    """Rebuild the delta layers as apply into an engine does: the base's layers only streamed,
    just the entries the recipes name kept. A decoder read of bytes not kept would be a
    RuntimeError, not one of deltaimg's errors, and fail the test."""
    base = open_image(base_archive)
    streamed = dataclasses.replace(base, layers=[Layer(layer.diff_id, layer.open) for layer in base.layers])
    with BaseContent(streamed, tmp, partial=True) as content:
        references = []
        for name in deltas:
            with opened.open_payload(name) as payload:
                references += base_references(payload)
        content.fetch_entries(references)
        for name in deltas:
            with opened.open_payload(name) as payload:
                rebuild_layer(payload, content, lambda data: None)


def test_the_untouched_bundle_applies(subject):
    assert expect_only_own_errors(subject, subject.bundle, ()) == "applied"
    assert expect_only_own_errors(subject, subject.with_payloads(subject.payloads), ()) == "applied"  # re-signing is sound


@FUZZ
@given(data=st.data())
def test_any_damage_to_the_file_gives_a_deltaimg_error_at_worst(subject, data):
    damaged = damage(subject.bundle, data)
    event(expect_only_own_errors(subject, damaged, UNSIGNED, may_apply=damaged == subject.bundle))


@FUZZ
@given(index=st.integers(0, 10_000), value=json_values)
def test_any_json_value_anywhere_in_a_signed_manifest_gives_a_deltaimg_error_at_worst(subject, index, value):
    manifest = replace_one_value(json.loads(json.dumps(subject.manifest)), index, value)
    event(expect_only_own_errors(subject, subject.signed(json.dumps(manifest).encode(), subject.payload_area),
                                 (BundleFormatError, IntegrityError, BaseMismatchError, DowngradeError)))


def _delta_parts(payload: bytes) -> tuple[bytes, bytes]:
    """(recipe, chunk frames) of a layer delta payload."""
    stream = io.BytesIO(payload)
    recipe_len, frame_len = lf.read_header(stream)
    return bytes(zstd_ref.decompress(stream.read(frame_len), recipe_len)), stream.read()


def _delta_payload(recipe: bytes, frames: bytes) -> bytes:
    frame = zstd_ref.compress(recipe, level=1)
    return lf.pack_header(len(recipe), len(frame)) + frame + frames


def _replace_number(recipe: bytes, at: int, value: int) -> bytes:
    """``recipe`` with the varint starting at ``at`` (or the byte there, if none does) set to ``value``."""
    reader = varint.Reader(recipe[at:])
    try:
        reader.get()
        end = at + reader.pos
    except DeltaimgError:
        end = at + 1
    out = bytearray()
    varint.put(out, value)
    return recipe[:at] + bytes(out) + recipe[end:]


@FUZZ
@given(data=st.data())
def test_any_damage_to_a_signed_layer_recipe_gives_a_deltaimg_error_at_worst(subject, data):
    names = sorted(n for n in subject.payloads if n.startswith("layer-"))
    name = data.draw(st.sampled_from(names), label="payload")
    recipe, frames = _delta_parts(subject.payloads[name])
    if data.draw(st.booleans(), label="replace a number"):
        at = data.draw(st.integers(0, len(recipe) - 1), label="at")
        recipe = _replace_number(recipe, at, data.draw(st.sampled_from(INTERESTING) | st.integers(0, 1 << 64), label="value"))
    else:
        recipe = damage(recipe, data)
    payloads = {**subject.payloads, name: _delta_payload(recipe, frames)}
    event(expect_only_own_errors(subject, subject.with_payloads(payloads), (BundleFormatError, IntegrityError)))


@FUZZ
@given(data=st.data())
def test_any_damage_to_signed_chunk_frames_gives_a_deltaimg_error_at_worst(subject, data):
    names = sorted(n for n in subject.payloads if n.startswith("layer-"))
    name = data.draw(st.sampled_from(names), label="payload")
    recipe, frames = _delta_parts(subject.payloads[name])
    payloads = {**subject.payloads, name: _delta_payload(recipe, damage(frames, data))}
    event(expect_only_own_errors(subject, subject.with_payloads(payloads), (BundleFormatError, IntegrityError)))


def _chunks_decoded(subject: Subject, recipe: bytes, frames: bytes) -> tuple[list[lf.Chunk], bytes, list[bytes], list[bytes]]:
    """(chunk table, record bytes, each chunk's literal bytes, each chunk's reference prefix)."""
    chunks, reader = lf.decode_recipe(recipe, len(frames))
    with tempfile.TemporaryDirectory() as tmp, BaseContent(open_image(subject.base), tmp) as old:
        prefixes = [b"".join(old.read(s.layer, (old.entry(s.layer, s.index).pre_offset if s.part == lf.PART_PRE
                                                 else old.entry(s.layer, s.index).data_offset) + s.start, s.length)
                             for s in chunk.spans) for chunk in chunks]
    literals, at = [], 0
    for chunk, prefix in zip(chunks, prefixes):
        literals.append(bytes(zstd_ref.decompress(frames[at: at + chunk.frame_len], chunk.literal_len, prefix)))
        at += chunk.frame_len
    return chunks, recipe[reader.pos:], literals, prefixes


@FUZZ
@given(data=st.data())
def test_any_damage_to_a_signed_literal_stream_gives_a_deltaimg_error_at_worst(subject, data):
    """The literal bytes themselves (headers, new file bytes, bsdiff's control, diff and extra
    streams) damaged, then compressed again so they decode: what the recipe makes of them."""
    names = sorted(n for n in subject.payloads if n.startswith("layer-"))
    name = data.draw(st.sampled_from(names), label="payload")
    recipe, frames = _delta_parts(subject.payloads[name])
    chunks, records, literals, prefixes = _chunks_decoded(subject, recipe, frames)
    which = data.draw(st.integers(0, len(chunks) - 1), label="chunk")
    literals[which] = damage(literals[which], data)
    new_frames = [zstd_ref.compress(literal, prefix, level=1) for literal, prefix in zip(literals, prefixes)]
    table = [lf.Chunk(len(literal), len(frame), chunk.spans) for chunk, literal, frame in zip(chunks, literals, new_frames)]
    payload = _delta_payload(lf.encode_recipe(table, records), b"".join(new_frames))
    event(expect_only_own_errors(subject, subject.with_payloads({**subject.payloads, name: payload}),
                                 (BundleFormatError, IntegrityError)))


@FUZZ
@given(old=st.binary(max_size=600), new_size=st.integers(0, 2000), control=st.binary(max_size=200),
       sparse_diff=st.binary(max_size=200), extra=st.binary(max_size=600))
def test_bspatch_of_arbitrary_streams_makes_the_declared_size_or_a_deltaimg_error(old, new_size, control, sparse_diff, extra):
    try:
        with capped(MINUTE):
            assert len(bsdiff.patch(old, new_size, control, sparse_diff, extra)) == new_size
    except (IntegrityError, BundleFormatError) as exc:  # streams that do not apply; a sparse stream that does not parse
        event(f"refused: {type(exc).__name__}")
