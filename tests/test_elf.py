"""Deltas that understand executables: the branch transform is exact on real ELF files, ELF
libraries changed between two compiled versions are coded under it (delta/executable.py) and
rebuild exactly, smaller than without it; DELTAIMG_ELF=0 gives the bundle of before."""

from __future__ import annotations

import glob
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from deltaimg.bundle.format import U32
from deltaimg.codec import branches, elf
from deltaimg.delta import executable, recipe
from tests import imagefactory as f
from tests.conftest import archive_image, assert_same_image, run_cli
from tests.test_inside import segment_kinds

REAL = sorted({os.path.realpath(p) for p in glob.glob("/usr/lib/x86_64-linux-gnu/lib*.so*")
               if 50_000 < os.path.getsize(os.path.realpath(p)) < 3_000_000})[:40]


def test_the_transform_is_undone_exactly_on_real_libraries_and_busybox():
    busybox = shutil.which("busybox")
    assert busybox and REAL, "busybox and the system's libraries are needed"
    parsed = 0
    for path in [os.path.realpath(busybox), *REAL]:
        data = Path(path).read_bytes()
        image = elf.parse(data)
        if image is None:
            continue
        parsed += 1
        transformed = branches.forward(data, image.layout)
        assert transformed != data and len(transformed) == len(data), path
        assert branches.inverse(transformed, image.layout) == data, path
    assert parsed >= 20


def test_every_int32_operand_round_trips_whatever_it_holds():
    lo, hi = 0x1000, 0x90000
    for a in (5, 0x1005, 0x40000, 0x8FFF0, 0x90000, 0x200000):
        for x in [*range(-0x210000, 0x210000, 97), -2**31, 2**31 - 1, lo, hi - 1, hi]:
            v = branches._to_target(x, a, lo, hi)
            assert -2**31 <= v < 2**31 and branches._from_target(v, a, lo, hi) == x
    assert branches._to_target(0x2000 - 0x1005, 0x1005, lo, hi) == 0x2000  # a call into the image


def aarch64_code(calls: list[tuple[int, int]]) -> bytes:
    """BL, B.cond, CBZ and ADRP words at their (pc, target) pairs, with other instructions between."""
    words = []
    for n, (pc, target) in enumerate(calls):
        delta = (target - pc) >> 2
        kind = n % 4
        if kind == 0:
            words.append(0x94000000 | (delta & 0x03FFFFFF))  # BL
        elif kind == 1:
            words.append(0x54000000 | ((delta & 0x7FFFF) << 5) | 1)  # B.NE
        elif kind == 2:
            words.append(0xB4000000 | ((delta & 0x7FFFF) << 5) | 3)  # CBZ x3
        else:
            page = ((target >> 12) - (pc >> 12)) & 0x1FFFFF
            words.append(0x90000000 | ((page & 3) << 29) | ((page >> 2) << 5) | 2)  # ADRP x2
        words.append(0xD503201F)  # NOP
    return struct.pack(f"<{len(words)}I", *words)


def test_aarch64_branches_become_absolute_and_come_back():
    rng = random.Random(7)
    addr = 0x10000
    calls = [(addr + 8 * n, rng.randrange(0x10000, 0x80000) & ~3) for n in range(400)]
    code = aarch64_code(calls)
    data = bytes(64) + code + bytes(64)
    layout = elf.Layout(elf.AARCH64, 0, 0x100000, (elf.CodeRange(64, len(code), addr),))
    transformed = branches.forward(data, layout)
    assert branches.inverse(transformed, layout) == data
    # the same calls from code moved by 0x400 bytes read alike once transformed
    moved = aarch64_code([(pc + 0x400, target) for pc, target in calls])
    moved_layout = elf.Layout(elf.AARCH64, 0, 0x100000, (elf.CodeRange(64, len(moved), addr + 0x400),))
    moved_t = branches.forward(bytes(64) + moved + bytes(64), moved_layout)
    assert moved != code and moved_t == transformed


def test_odd_files_are_not_taken_for_elf_images():
    data = Path(REAL[0]).read_bytes()
    assert elf.parse(data) is not None
    assert elf.parse(data[:100]) is None  # the tables lie past the end
    assert elf.parse(data[:4] + b"\x01" + data[5:]) is None  # 32-bit
    assert elf.parse(b"\x7fELF" + bytes(60)) is None
    header = bytearray(data)
    struct.pack_into("<Q", header, 0x28, len(data) - 10)  # section headers past the end
    assert elf.parse(bytes(header)) is None


def compile_library(tmp: Path, name: str, edit: bool) -> bytes:
    """A shared library of many small functions calling each other, compiled by gcc; the edited
    version grows two functions early in the file, so every later function moves."""
    source = ["#include <string.h>", "int sink;"]
    for n in range(600):
        extra = "sink += n * 7; sink ^= n >> 3; sink -= 11;" if edit and n in (20, 310) else ""
        calls = " ".join(f"if (n & {1 << (k % 8)}) sink += f{(n * 7 + k * 13) % 600}(n - 1);" for k in range(4))
        source.append(f"int f{n}(int n);")
        source.append(f"int f{n}(int n) {{ if (n <= 0) return {n}; {extra} {calls} return sink + {n}; }}")
    c = tmp / f"{name}.c"
    c.write_text("\n".join(source[:2] + [line for line in source[2:] if line.endswith(");")] +
                           [line for line in source[2:] if not line.endswith(");")]))
    out = tmp / f"{name}.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-fno-inline", "-o", str(out), str(c)], check=True,
                   capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> tuple[bytes, bytes]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed") if os.environ.get("CI") else pytest.skip("no gcc")
    tmp = tmp_path_factory.mktemp("elf-lib")
    return compile_library(tmp, "v1", False), compile_library(tmp, "v2", True)


def test_a_recompiled_library_codes_smaller_under_the_transform(libraries):
    base, target = libraries
    blob, cost = executable.encode(base, target)
    assert executable.decode(base, len(target), blob) == target
    plain = executable.estimate(executable.code(base, 0, target), base, target)
    assert cost * 10 < plain * 9, (cost, plain)  # at least 10 % smaller on this pair
    assert executable.code_file(base, target)[0].executable == blob


@pytest.fixture(scope="module")
def pair(libraries, tmp_path_factory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("elf-images")
    images = []
    for side, tag in ((0, "elf:1"), (1, "elf:2")):
        os_layer = f.write_layer(tmp / f"os-{side}.tar", f.complete_tree([f.file("etc/os-release", b"ID=test\n")]))
        top = f.write_layer(tmp / f"top-{side}.tar", f.complete_tree([f.file("usr/lib/libdemo.so.1", libraries[side])]))
        images.append(str(tmp / f"image-{side}.tar"))
        f.write_docker_archive(Path(images[-1]), [f.ImageSpec([os_layer, top], [tag])])
    return images[0], images[1]


def make(pair, keypair, out: Path, switch: str) -> Path:
    result = run_cli("make", pair[0], pair[1], "-o", str(out), "--key", keypair[0], env={"DELTAIMG_ELF": switch})
    assert result.returncode == 0, result.stderr
    return out


def version(bundle: Path) -> int:
    return U32.unpack(bundle.read_bytes()[8:12])[0]


def test_a_changed_library_in_a_layer_rebuilds_exactly_and_the_switch_gives_the_old_bundle(pair, keypair, tmp_path):
    on = make(pair, keypair, tmp_path / "on.dimg", "1")
    off = make(pair, keypair, tmp_path / "off.dimg", "0")
    assert segment_kinds(str(on), keypair[1], pair[1])["usr/lib/libdemo.so.1"] == [recipe.SEGMENT_ELF]
    assert recipe.SEGMENT_ELF not in segment_kinds(str(off), keypair[1], pair[1])["usr/lib/libdemo.so.1"]
    assert (version(on), version(off)) == (3, 2)
    assert on.stat().st_size < off.stat().st_size, (on.stat().st_size, off.stat().st_size)
    config, _ = archive_image(pair[1])
    for bundle in (on, off):
        out = tmp_path / f"{bundle.stem}.tar"
        result = run_cli("apply", str(bundle), "--trust", keypair[1], "--base", pair[0], "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert_same_image(str(out), config)
