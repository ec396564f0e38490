"""make's time stays linear on any content: bsdiff, quadratic on runs of equal bytes, never sees one.

Each case makes a real bundle in process (bsdiff4 is watched, not replaced) and rebuilds the target
from it byte for byte; what bsdiff was given is the observable cap on its work.
"""

from __future__ import annotations

import random

import pytest

from deltaimg.apply.archive import apply_to_archive
from deltaimg.bundle import signing
from deltaimg.bundle.reader import open_bundle
from deltaimg.codec import bsdiff
from deltaimg.delta import choice
from deltaimg.images import open_image
from deltaimg.make.build import make_bundle
from tests import imagefactory as f

MiB = 1 << 20
BUSYBOX = "/bin/busybox"


@pytest.fixture
def bsdiff_inputs(monkeypatch) -> list[tuple[int, int]]:
    """(base bytes, target bytes) of every bsdiff run from now on."""
    seen: list[tuple[int, int]] = []
    diff = bsdiff.diff

    def watched(base: bytes, target: bytes):
        seen.append((len(base), len(target)))
        return diff(base, target)

    monkeypatch.setattr(bsdiff, "diff", watched)
    return seen


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def edited(data: bytes, *at: int) -> bytes:
    out = bytearray(data)
    for position in at:
        out[position:position + 16] = noise(16, position)
    return bytes(out)


def shifted(binary: bytes, step: int = 64) -> bytes:
    """What a rebuild does to an executable: small changes all over (here every ``step``-th byte of its
    middle third moves by one, as offsets do when code moves), which zstd codes poorly and bsdiff well."""
    out = bytearray(binary)
    for at in range(len(out) // 3, 2 * len(out) // 3, step):
        out[at] = (out[at] + 1) % 256
    return bytes(out)


def round_trip(tmp_path, keypair, base_files: dict[str, bytes], target_files: dict[str, bytes]) -> int:
    """Make the bundle from an image of ``base_files`` to one of ``target_files``, rebuild the target
    from it, check it is the target byte for byte; the bundle's size."""
    archives = []
    for name, files in (("base", base_files), ("target", target_files)):
        layer = f.write_layer(tmp_path / f"{name}.layer", f.complete_tree([f.file(p, d) for p, d in files.items()]))
        archives.append(f.write_docker_archive(tmp_path / f"{name}.tar", [f.ImageSpec([layer], [f"choice/{name}:1"])])[0].path)
    bundle = tmp_path / "b.dimg"
    made = make_bundle(open_image(str(archives[0])), open_image(str(archives[1])), str(bundle), signing.load_private(keypair[0]))
    rebuilt = tmp_path / "rebuilt.tar"
    apply_to_archive(open_bundle(str(bundle), [signing.load_public(keypair[1])]), open_image(str(archives[0])), str(rebuilt))
    assert open_image(str(rebuilt)).config_digest == open_image(str(archives[1])).config_digest
    return made["bundle_size"]


def test_five_files_of_5_mib_of_zeros_with_16_bytes_changed_never_reach_bsdiff(tmp_path, keypair, bsdiff_inputs):
    """tar-split's fatlonglink case, which took make 193 s."""
    zeros = bytes(5 * MiB)
    base = {f"zeros/{n}": zeros for n in range(5)}
    target = {**base, "zeros/2": edited(zeros, 3 * MiB)}
    assert round_trip(tmp_path, keypair, base, target) < 4096
    assert bsdiff_inputs == []


def test_a_disk_image_of_runs_and_data_gives_bsdiff_only_the_data_between_the_runs(tmp_path, keypair, bsdiff_inputs):
    data = noise(MiB, 1) + bytes(2 * MiB) + noise(MiB, 2)
    assert choice.plan(data) == [(0, MiB, True), (MiB, 3 * MiB, False), (3 * MiB, 4 * MiB, True)]
    changed = shifted(data[:MiB], 8) + edited(data[MiB:3 * MiB], MiB) + shifted(data[3 * MiB:], 8)
    round_trip(tmp_path, keypair, {"disk.img": data}, {"disk.img": changed})
    assert [target for _, target in bsdiff_inputs] == [MiB, MiB]


def test_a_block_repeated_at_long_range_is_coded_by_zstd_not_bsdiff(tmp_path, keypair, bsdiff_inputs):
    block = noise(4096, 3) * 1024  # 4 MiB: no run-like window, but each window repeats the one before
    round_trip(tmp_path, keypair, {"repeat": block}, {"repeat": edited(block, 2 * MiB)})
    assert bsdiff_inputs == []


def test_an_executable_changed_all_over_still_goes_to_bsdiff_whole(tmp_path, keypair, bsdiff_inputs):
    with open(BUSYBOX, "rb") as exe:
        binary = exe.read()
    assert choice.plan(binary) == [(0, len(binary), True)]
    round_trip(tmp_path, keypair, {"bin/busybox": binary}, {"bin/busybox": shifted(binary)})
    assert bsdiff_inputs == [(len(binary), len(binary))]


def test_bytes_copied_over_with_a_few_edits_are_left_to_zstd(tmp_path, keypair, bsdiff_inputs):
    """zstd -1 against the partner already codes them to a 64th: bsdiff could not win enough to pay for itself."""
    with open(BUSYBOX, "rb") as exe:
        binary = exe.read()
    size = round_trip(tmp_path, keypair, {"bin/busybox": binary}, {"bin/busybox": edited(binary, len(binary) // 3)})
    assert bsdiff_inputs == [] and size < 4096
