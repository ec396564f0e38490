"""Item 14 of issue 16: make on an image of very many empty files keeps a compact table per file.

A base of 100,000 empty files and a target that holds them all again in a layer of its own (what
scripts/stress-many-files measures at a million). make's peak memory, measured by the kernel, stays
under a cap that the per-file tables of before (a dataclass with a __dict__ per base entry, a list
per file name, a Node per file in the change summary: 141 MiB here) went past.
"""

from __future__ import annotations

from tests import imagefactory as f
from tests.memory import measured

FILES = 100_000
CAP = 120 << 20


def test_make_on_a_hundred_thousand_empty_files_stays_under_its_memory_cap(keypair, tmp_path):
    files = [f.file(f"d{i // 1000}/f{i}") for i in range(FILES)]
    base = f.write_layer(tmp_path / "base.layer", f.complete_tree(files))
    target = f.write_layer(tmp_path / "target.layer", f.complete_tree(files + [f.file("etc/version", b"2\n")]))
    f.write_docker_archive(tmp_path / "base.tar", [f.ImageSpec([base], ["many/app:1"])])
    f.write_docker_archive(tmp_path / "target.tar", [f.ImageSpec([base, target], ["many/app:2"])])
    made = measured("make", str(tmp_path / "base.tar"), str(tmp_path / "target.tar"), "-o", str(tmp_path / "u.dimg"),
                    "--key", keypair[0], "--quiet")
    assert (made.returncode, made.stderr) == (0, "")
    assert made.peak_rss < CAP, f"make peaked at {made.peak_rss >> 20} MiB"
