"""SIGTERM (cron, systemd, kill) during make or an archive apply: the command unwinds as for Ctrl-C,
removes every temporary file it made, says so in one line and exits 130 (docs/exit-codes.md).

The target adds three layers of 24 MiB files (zeros: quick to compress, as long as any to write), so
each command is still at work when its first temporary file appears; that is when the signal is sent.
The worst moment is the instant a temporary file or folder has been made and nothing yet removes it:
the last tests send SIGTERM at exactly that instant, from inside the process.
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


# Runs deltaimg with os.mkdir and os.open wrapped: the moment the first file or folder whose name
# matches argv[1] has been made, the process sends itself SIGTERM.
SIGNAL_AS_MADE = """
import fnmatch, os, runpy, signal, sys
pattern = sys.argv.pop(1)
def signalling(make):
    def wrapper(path, *args, **kwargs):
        made = make(path, *args, **kwargs)
        if fnmatch.fnmatch(os.path.basename(os.fsdecode(path)), pattern) and not signalling.sent:
            signalling.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return made
    return wrapper
signalling.sent = False
os.mkdir, os.open = signalling(os.mkdir), signalling(os.open)
sys.argv[0] = "deltaimg"
runpy.run_module("deltaimg", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command, pattern", [
    ("make", "deltaimg-make-*"), ("make", ".deltaimg-*.spool"), ("make", ".deltaimg-*.tmp"),
    ("apply", ".deltaimg-*.tar.tmp"), ("apply", "deltaimg-apply-*")])
def test_sigterm_the_instant_a_temporary_file_or_folder_is_made_leaves_nothing_behind(
        command, pattern, example_pair, example_bundle, keypair, tmp_path):
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    if command == "make":
        arguments = ["make", *example_pair, "-o", str(out / "app.dimg"), "--key", keypair[0]]
    else:
        arguments = ["apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out / "app.tar")]
    result = subprocess.run([sys.executable, "-c", SIGNAL_AS_MADE, pattern, *arguments], capture_output=True,
                            text=True, env={**os.environ, "TMPDIR": str(scratch)}, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "deltaimg: interrupted\n")
    assert (list(scratch.iterdir()), list(out.iterdir())) == ([], [])
