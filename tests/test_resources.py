"""Memory stays bounded: make and apply of a large image pair peak far below the image size.

Peak resident memory is read from the kernel's rusage of each command (no wall-clock asserts).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import imagefactory as f
from tests.memory import measured

IMAGE_BYTES = 160 << 20
PEAK_LIMIT = 512 << 20  # the budget for any image size


def peak_rss(*args: str) -> int:
    """Run the CLI; return its own peak resident set size in bytes."""
    outcome = measured(*args)
    assert outcome.returncode == 0, outcome.stderr
    return outcome.peak_rss


@pytest.fixture(scope="module")
def large_pair(tmp_path_factory) -> tuple[Path, Path, int]:
    """A ~160 MB single-layer image of real libraries and its upgrade (patched ELFs, edits, rebuild)."""
    tmp = tmp_path_factory.mktemp("large")
    libs = f.find_elf_files(IMAGE_BYTES, libraries=True, max_file_bytes=48 << 20)
    entries = f.complete_tree(f.elf_entries("usr/lib", libs, mode=0o644) + f.stdlib_modules("usr/lib/python3", 4 << 20))
    upgraded = f.upgrade(entries, f.UpgradePlan(elf_patches=len(libs) // 4, python_edit_every=5)).full
    v1 = f.write_layer(tmp / "v1.layer", entries)
    v2 = f.write_layer(tmp / "v2.layer", upgraded)
    old = f.write_docker_archive(tmp / "v1.tar", [f.ImageSpec([v1], ["big:1"])])[0].path
    new = f.write_docker_archive(tmp / "v2.tar", [f.ImageSpec([v2], ["big:2"])])[0].path
    return old, new, v2.size


def test_make_and_apply_of_a_large_pair_stay_within_the_memory_budget(large_pair, keypair, tmp_path):
    old, new, layer_size = large_pair
    assert layer_size > 120 << 20
    bundle = str(tmp_path / "big.dimg")
    make_peak = peak_rss("make", str(old), str(new), "-o", bundle, "--key", keypair[0], "--quiet")
    apply_peak = peak_rss("apply", bundle, "--trust", keypair[1], "--base", str(old), "-o", str(tmp_path / "out.tar"), "--quiet")
    assert make_peak < PEAK_LIMIT, f"make peaked at {make_peak >> 20} MiB"
    assert apply_peak < PEAK_LIMIT, f"apply peaked at {apply_peak >> 20} MiB"
    assert os.path.getsize(bundle) * 20 < layer_size
