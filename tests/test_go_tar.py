"""Layer tars Go's archive/tar rejects: deltaimg carries them byte for byte, Docker 20.10 refuses to
load them ("archive/tar: invalid tar header"), and engine apply says so before it loads anything."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from deltaimg.errors import EngineError
from deltaimg.tar.gocheck import GoTarCheck, go_rejects
from tests import imagefactory as f
from tests.conftest import run_cli
from tests.engine_helpers import docker_client  # noqa: F401
from tests.test_formats import round_trip

END = bytes(1024)


def header(name: bytes, size_field: bytes, typeflag: bytes = b"0") -> bytes:
    """A ustar header with a correct checksum and ``size_field`` as its 12 size bytes."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:148] = b"0000644\0" + b"0000000\0" + b"0000000\0" + size_field + b"00000000000\0"
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def regular(name: bytes, data: bytes) -> bytes:
    return header(name, b"%011o\0" % len(data)) + data + bytes(-len(data) % 512)


def pax(records: bytes) -> bytes:
    return header(b"PaxHeaders/a", b"%011o\0" % len(records), b"x") + records + bytes(-len(records) % 512)


HELLO = regular(b"a", b"hello\n")
REJECTED = {
    "a PAX record longer than its header": (pax(b"9999 path=x\n") + HELLO + END, "has a malformed PAX record at byte 0"),
    "a NUL in a PAX path": (pax(b"12 path=a\0b\n") + HELLO + END, "has a malformed PAX record at byte 0"),
    "a negative size": (header(b"n", b"\xff" * 12) + END, "has a negative size at byte 0"),
    "a size that is not octal": (HELLO + header(b"b", b"00000000009\0") + END, "has a header whose size field is not a number at byte 1024"),
}
ACCEPTED = {
    "a valid layer": HELLO + END,
    "bytes after the end-of-archive blocks": HELLO + END + b"junk",
    "a last block cut short": header(b"a", b"%011o\0" % 6) + b"hello\n",
}


@pytest.mark.parametrize("name", REJECTED)
def test_what_go_rejects_is_found_and_placed(name):
    layer, reason = REJECTED[name]
    assert go_rejects(io.BytesIO(layer)) == reason


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_go_reads_or_never_reads_passes(name):
    assert go_rejects(io.BytesIO(ACCEPTED[name])) is None


@pytest.mark.parametrize("piece", [1, 7, 512, 1 << 20])
@pytest.mark.parametrize("name", [*REJECTED, *ACCEPTED])
def test_a_layer_checked_as_it_is_written_gets_the_same_answer_whatever_the_pieces(name, piece):
    layer, reason = REJECTED[name] if name in REJECTED else (ACCEPTED[name], None)
    check = GoTarCheck()
    found = [check.feed(layer[at : at + piece]) for at in range(0, len(layer), piece)]
    assert (check.finish(), found[-1]) == (reason, reason)


def test_the_example_images_every_layer_passes(tmp_path):
    pair = f.build_example_pair(tmp_path)
    for spec in (pair.v1, pair.v2):
        for layer in spec.layers:
            with open(layer.path, "rb") as stream:
                assert go_rejects(stream) is None, layer.path


def raw_layer(path: Path, data: bytes) -> f.LayerFile:
    path.write_bytes(data)
    return f.LayerFile(path, f.sha256_file(path), len(data))


def pair_with(tmp_path: Path, bad: bytes, tag: str) -> tuple[f.WrittenImage, f.WrittenImage]:
    base_layer = f.write_layer(tmp_path / "base.layer", f.complete_tree([f.file("etc/version", b"1\n")]))
    [base] = f.write_docker_archive(tmp_path / "base.tar", [f.ImageSpec([base_layer], [f"{tag}:1"])])
    [target] = f.write_docker_archive(tmp_path / "target.tar", [f.ImageSpec([base_layer, raw_layer(tmp_path / "bad.layer", bad)], [f"{tag}:2"])])
    return base, target


@pytest.mark.parametrize("name", REJECTED)
def test_such_a_layer_round_trips_byte_for_byte_through_an_archive(name, keypair, tmp_path):
    base, target = pair_with(tmp_path, REJECTED[name][0], "gotar/archive")
    round_trip(str(base.path), str(target.path), keypair, tmp_path, target.config_bytes)


@pytest.mark.parametrize("name", REJECTED)
def test_docker_load_refuses_such_a_layer(docker_client, name, tmp_path):
    _, target = pair_with(tmp_path, REJECTED[name][0], "deltaimg-test-gotar/load")
    result = subprocess.run(["docker", "load", "-i", str(target.path)], capture_output=True, text=True)
    assert result.returncode == 1 and "archive/tar: invalid tar header" in result.stderr, result.stderr
    assert docker_client.api.images(filters={"reference": "deltaimg-test-gotar/load:2"}) == []


def test_engine_apply_names_the_layer_and_loads_nothing(docker_client, keypair, tmp_path):
    layer, reason = REJECTED["a NUL in a PAX path"]
    base, target = pair_with(tmp_path, layer, "deltaimg-test-gotar/apply")
    bundle = str(tmp_path / "b.dimg")
    assert run_cli("make", str(base.path), str(target.path), "-o", bundle, "--key", keypair[0]).returncode == 0
    subprocess.run(["docker", "load", "-i", str(base.path)], check=True, capture_output=True)
    try:
        result = run_cli("apply", bundle, "--trust", keypair[1])
        assert result.returncode == EngineError.exit_code, result.stderr
        assert result.stderr == (f"deltaimg: error: layer 1 ({target.diff_ids[1]}) of deltaimg-test-gotar/apply:2 "
                                 f"{target.config_digest[:19]} "
                                 f"{reason}, which Docker's tar reader rejects, so docker load would fail; nothing was "
                                 "loaded. Make the target image with a standard tar writer and make the bundle again\n")
        assert target.config_digest not in {i["Id"] for i in docker_client.api.images(all=True)}
    finally:
        docker_client.api.remove_image("deltaimg-test-gotar/apply:1", force=True)
