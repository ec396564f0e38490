"""make's time stays linear whatever a file holds: bsdiff4's diff is quadratic on stretches that
repeat themselves (runs of one byte, short patterns, blocks repeated at long range), so such
stretches never reach it; files bsdiff codes best (executables) still reach it whole."""

from __future__ import annotations

import random
import re

import pytest

from deltaimg.codec import bsdiff
from deltaimg.delta import choice
from tests import imagefactory as f
from tests.test_formats import round_trip

RUN_CAP = (choice.RUN_WINDOWS + 2) * choice.WINDOW  # the longest run of one byte bsdiff may be given


def edited(data: bytes, seed: int, edits: int = 4, size: int = 16) -> bytes:
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rnd.randrange(len(out) - size)
        out[at : at + size] = rnd.randbytes(size)
    return bytes(out)


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("content", [
    pytest.param(bytes(6 << 20), id="zeros"),
    pytest.param(noise(64, 1) * (1 << 16), id="a 64-byte pattern"),
    pytest.param(noise(64 << 10, 2) * 64, id="a 64 KiB block repeated"),
])
def test_content_that_repeats_itself_is_coded_literally_whole(content):
    assert choice.plan(edited(content, 3)) == [(0, len(content), False)]


def test_a_run_between_two_random_stretches_is_cut_out_and_they_stay_bsdiff_pieces():
    target = edited(noise(2 << 20, 4) + bytes(3 << 20) + noise(2 << 20, 5), 6)
    assert choice.plan(target) == [(0, 2 << 20, True), (2 << 20, 5 << 20, False), (5 << 20, 7 << 20, True)]


def test_a_run_with_a_few_bytes_edited_in_place_is_an_aligned_delta_of_its_edits_only():
    base = bytes(6 << 20)
    target = edited(base, 10)
    [piece] = choice.code(base, 4096, target)
    assert (piece.start, piece.length, piece.base_start, piece.base_len) == (0, len(target), 4096, len(base))
    control, diff, extra = piece.streams
    assert (len(control), extra) == (24, b"") and len(diff) < 4 * 16 + 4 * 8
    assert bsdiff.patch(base, len(target), control, diff, extra) == target


def test_a_run_unlike_the_base_bytes_it_lines_up_with_is_literal():
    base = noise(6 << 20, 11)
    [piece] = choice.code(base, 0, edited(bytes(6 << 20), 12))
    assert piece.streams is None


def test_an_executable_reaches_bsdiff_whole():
    [elf] = f.find_elf_files(1 << 20, min_file_bytes=1 << 20, max_file_bytes=4 << 20)[:1]
    data = elf.read_bytes()
    assert choice.plan(data) == [(0, len(data), True)]


def test_make_gives_bsdiff_no_long_run_and_the_bundle_rebuilds_byte_for_byte(keypair, tmp_path, monkeypatch):
    """A 12 MiB disk image (segmented) and a 5 MiB database file (whole), mostly zeros, beside an
    executable: bsdiff sees the executable whole, the disk's random MiB, and no run past ``RUN_CAP``."""
    [elf] = f.find_elf_files(1 << 20, min_file_bytes=1 << 20, max_file_bytes=4 << 20)[:1]
    program = elf.read_bytes()
    disk = bytes(4 << 20) + noise(1 << 20, 7) + bytes(7 << 20)
    database = bytes(5 << 20)
    v1 = f.write_layer(tmp_path / "v1.layer", f.complete_tree([
        f.file("srv/disk.img", disk), f.file("srv/db", database), f.file("usr/bin/app", program, mode=0o755)]))
    v2 = f.write_layer(tmp_path / "v2.layer", f.complete_tree([
        f.file("srv/disk.img", edited(disk, 8, edits=6, size=1024)), f.file("srv/db", edited(database, 9)),
        f.file("usr/bin/app", f.patch_elf(program, seed="v2"), mode=0o755)]))
    [base] = f.write_docker_archive(tmp_path / "v1.tar", [f.ImageSpec([v1], ["linear/app:1"])])
    [target] = f.write_docker_archive(tmp_path / "v2.tar", [f.ImageSpec([v2], ["linear/app:2"])])
    inputs: list[tuple[bytes, bytes]] = []
    real_diff = choice.bsdiff.diff

    def recording_diff(base_bytes: bytes, target_bytes: bytes):
        inputs.append((base_bytes, target_bytes))
        return real_diff(base_bytes, target_bytes)

    monkeypatch.setattr(choice.bsdiff, "diff", recording_diff)
    manifest = round_trip(str(base.path), str(target.path), keypair, tmp_path, target.config_bytes)
    longest_allowed = re.compile(rb"(.)\1{%d}" % RUN_CAP, re.S)
    assert [len(t) for _, t in inputs if longest_allowed.search(t)] == []
    assert sorted(len(t) for _, t in inputs) == sorted([len(f.patch_elf(program, seed="v2")), 1 << 20])  # the disk's random MiB
    assert manifest["layers"][0]["stats"]["bsdiff"] == 3  # and the database, as an aligned delta
