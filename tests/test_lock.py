"""The run lock (deltaimg.apply.lock): one apply at a time, a clear refusal, and status may look at any time."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from deltaimg.errors import OutputError, RunLockedError
from deltaimg.apply.lock import RunLock, holder
from tests.memory import MINUTE, measured


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    path = str(tmp_path / "lock")
    assert holder(path) is None
    with RunLock(path):
        assert holder(path) == os.getpid()
        with pytest.raises(RunLockedError, match=f"another deltaimg run \\(pid {os.getpid()}\\) holds {path}"):
            with RunLock(path):
                pass
    assert holder(path) is None
    with RunLock(path):  # released: the next run takes it
        pass


def test_a_run_waits_for_the_lock_when_told_to(tmp_path):
    path = str(tmp_path / "lock")
    first = RunLock(path).__enter__()
    threading.Timer(0.5, first.__exit__).start()
    started = time.monotonic()
    with RunLock(path, wait=30):
        assert 0.4 < time.monotonic() - started < 10
    with RunLock(path):
        with pytest.raises(RunLockedError, match="after waiting 0.5 s"):
            with RunLock(path, wait=0.5):
                pass


def test_status_looking_at_the_lock_does_not_make_a_run_fail(tmp_path):
    """``holder`` takes a shared lock for an instant: a run starting in that instant still gets in."""
    path = str(tmp_path / "lock")
    with RunLock(path):
        pass
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # what holder() does, held longer than it ever is
    threading.Timer(0.3, os.close, [fd]).start()
    with RunLock(path):
        assert holder(path) == os.getpid()


PRECIOUS = b"root:x:0:0:root:/root:/bin/bash\n"


def _planted(state_dir: str, tmp_path, kind: str) -> tuple[str, str]:
    """A lock path in ``state_dir`` that is not a plain file of its own, and the file it leads to."""
    os.makedirs(state_dir, exist_ok=True)
    lock, target = os.path.join(state_dir, "lock"), str(tmp_path / "precious")
    with open(target, "wb") as f:
        f.write(PRECIOUS)
    if kind == "a symbolic link":
        os.symlink(target, lock)
    elif kind == "a hard link to another file":
        os.link(target, lock)
    else:
        os.remove(target)
        os.mkfifo(target)
        os.rename(target, lock)
    return lock, target


@pytest.mark.parametrize("kind", ["a symbolic link", "a hard link to another file", "not a plain file"])
def test_a_lock_file_planted_as_a_link_or_fifo_is_refused_and_its_target_untouched(state_dir, tmp_path, example_bundle,
                                                                                   keypair, kind):
    lock, target = _planted(state_dir, tmp_path, kind)
    outcome = measured("apply", example_bundle, "--trust", keypair[1], timeout=MINUTE)
    assert (outcome.returncode, outcome.stderr) == (
        OutputError.exit_code,
        f"deltaimg: error: the lock file {lock} is {kind}; remove it (deltaimg creates {lock} itself, as a plain file) "
        "and run again\n")
    assert outcome.peak_rss < 512 << 20
    if kind != "not a plain file":
        with open(target, "rb") as f:
            assert f.read() == PRECIOUS, "the lock truncated or wrote into the file its link leads to"
    assert sorted(os.listdir(state_dir)) == ["lock"], "the run went on past the lock"

