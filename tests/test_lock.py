"""The run lock (deltaimg.apply.lock): one apply at a time, a clear refusal, and status may look at any time."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from deltaimg.errors import RunLockedError
from deltaimg.apply.lock import RunLock, holder


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
