"""deltaimg demo: the README's commands on a built-in image pair, leaving nothing behind unless asked."""

from __future__ import annotations

import os

from tests.conftest import run_cli


def test_demo_removes_its_example_files_and_says_so(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ran = run_cli("demo", env={"TMPDIR": str(scratch)})
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    folder = lines[0].split()[2].rsplit("/", 1)[0]
    assert os.path.dirname(folder) == str(scratch)
    assert lines[5].endswith(": identical to app-1.1")
    assert lines[-1] == f"the example files in {folder} are removed now (deltaimg demo --dir DIR keeps them)"
    assert list(scratch.iterdir()) == []


def test_demo_with_dir_keeps_its_example_files_there(tmp_path):
    ran = run_cli("demo", "--dir", str(tmp_path / "kept"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == f"the example files stay in {tmp_path / 'kept'}"
    assert sorted(os.listdir(tmp_path / "kept")) == ["app-1.0-to-1.1.dimg", "app-1.0.tar", "app-1.1-rebuilt.tar",
                                                     "app-1.1.tar", "release-key", "release-key.pub"]
