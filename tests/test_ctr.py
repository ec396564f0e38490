"""How deltaimg runs ctr when ctr misbehaves: hangs, floods its stderr, is interrupted mid-import,
or meets a reference whose image containerd no longer holds.

A real ctr cannot misbehave on demand, so a fake ``ctr`` script first on the PATH does it, and
hands every call it does not fake to the real ctr, against a private containerd
(tests/containerd_helpers.py). The fake writes its process ID, and its child's, to a file: once
deltaimg is done, neither may be running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from deltaimg.engine.containerd import normalize_ref
from deltaimg.engine.ctr import Ctr
from deltaimg.errors import EngineError, UsageError
from tests.conftest import run_cli
from tests.containerd_helpers import apply, containerd_pair, containerd_service, import_base  # noqa: F401

INTERRUPTED = 130
FLOOD = 10 << 20  # bytes the chatty ctr writes on stderr, every call


def fake_ctr(folder, behaviour: str) -> dict[str, str]:
    """A folder with a ``ctr`` that runs ``behaviour`` (sh; ``$pids`` is its pid file, ``$real`` the
    real ctr), and the environment that puts it first on the PATH."""
    real = shutil.which("ctr")
    if real is None:
        pytest.fail("ctr is missing (scripts/test installs Debian's containerd)")
    folder.mkdir(exist_ok=True)
    pids = folder / "pids"
    script = folder / "ctr"
    script.write_text(f"#!/bin/sh\npids={pids}\nreal={real}\necho $$ >> $pids\n{behaviour}\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}", "FAKE_PIDS": str(pids)}


def spawned(env: dict[str, str]) -> list[int]:
    try:
        with open(env["FAKE_PIDS"]) as pids:
            return [int(line) for line in pids if line.strip()]
    except FileNotFoundError:
        return []


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie runs nothing, holds nothing
    except FileNotFoundError:
        return False


HANG_ON_ALL_BUT_VERSION = """case "$*" in *" version") exec $real "$@";; esac
sleep 600 & echo $! >> $pids
wait"""


def test_a_hung_ctr_is_stopped_at_the_deadline_with_one_line_and_nothing_left_running(containerd_service, pair,
                                                                                     keypair, tmp_path):
    env = fake_ctr(tmp_path / "fake", HANG_ON_ALL_BUT_VERSION)

    result = run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", containerd_service.engine_option,
                     env={**env, "DELTAIMG_CTR_TIMEOUT": "2"})

    assert result.returncode == EngineError.exit_code, result.stderr
    assert result.stderr.splitlines() == [
        f"deltaimg: error: ctr images ls did not finish within 2 s on {containerd_service.socket}, so deltaimg "
        "stopped it; is containerd stuck? (a slow host: set DELTAIMG_CTR_TIMEOUT)"]
    assert len(spawned(env)) == 3  # ctr version, ctr images ls, and the child it waited for
    assert [pid for pid in spawned(env) if running(pid)] == []


def test_a_ctr_flooding_its_stderr_neither_blocks_nor_floods_the_message(containerd_service, pair, keypair, tmp_path):
    env = fake_ctr(tmp_path / "fake", f"head -c {FLOOD} /dev/zero | tr '\\0' . >&2\nexec $real \"$@\"")
    import_base(containerd_service, pair)

    result = apply(containerd_service, pair, keypair, env=env)

    assert result.returncode == 0, result.stderr[-2000:]
    assert containerd_service.engine.find_image(pair["tag"]["v2"])["Id"] == pair["v2"]
    flooding = Ctr(containerd_service.socket, "k8s.io", (str(tmp_path / "fake" / "ctr"),))
    with pytest.raises(EngineError) as failed:
        flooding.run("content", "get", "sha256:" + "0" * 64)  # the flood, then the real ctr's one line
    assert str(failed.value).endswith(f"ctr: content digest sha256:{'0' * 64}: not found")
    assert len(str(failed.value)) < 9000  # the end of its stderr, not 10 MiB


def test_an_interrupted_import_stops_ctr_and_reaps_it(containerd_service, pair, keypair, tmp_path):
    env = fake_ctr(tmp_path / "fake", 'case "$*" in *"images import -") ;; *) exec $real "$@";; esac\n'
                                      'sleep 600 & echo $! >> $pids\ntouch $pids.importing\nwait')
    import_base(containerd_service, pair)
    process = subprocess.Popen([sys.executable, "-m", "deltaimg", "apply", pair["bundle"], "--trust", keypair[1],
                                "--engine", containerd_service.engine_option], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(env["FAKE_PIDS"] + ".importing"):  # ctr images import - is running
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert [pid for pid in spawned(env) if running(pid)] == []
    assert normalize_ref(pair["tag"]["v2"]) not in containerd_service.engine.references()


def test_a_reference_whose_manifest_containerd_lost_is_skipped_with_one_warning(containerd_service, pair, keypair,
                                                                               example_pair):
    service = containerd_service
    import_base(service, pair)
    service.ctr.run("images", "import", example_pair[1])
    broken = normalize_ref("example/app:1.1")
    service.ctr.run("content", "rm", service.engine.references()[broken])

    result = apply(service, pair, keypair)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("deltaimg: warning: ")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"deltaimg: warning: containerd's image {broken} cannot be read (its content store "
                                  "lacks blob sha256:")
    assert warnings[0].endswith(f"so deltaimg skips it; pull or import it again, or remove it (ctr -n k8s.io images "
                                f"rm {broken})")
    assert service.engine.find_image(pair["tag"]["v2"])["Id"] == pair["v2"]


def test_a_timeout_that_is_no_number_of_seconds_is_a_usage_error(pair, keypair, tmp_path):
    result = run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", f"containerd={tmp_path}/x.sock",
                     env={"DELTAIMG_CTR_TIMEOUT": "soon"})
    assert result.returncode == UsageError.exit_code
    assert result.stderr.splitlines() == [
        "deltaimg: error: DELTAIMG_CTR_TIMEOUT=soon: give the seconds a ctr call may take (say 600)"]


@pytest.fixture
def pair(containerd_pair):
    return containerd_pair


def test_a_blob_stream_that_goes_silent_is_stopped_and_nothing_is_left_running(tmp_path, monkeypatch):
    env = fake_ctr(tmp_path / "fake", "printf 'first bytes'\nsleep 600 & echo $! >> $pids\nwait")
    monkeypatch.setenv("DELTAIMG_CTR_TIMEOUT", "1")
    stream = Ctr(str(tmp_path / "x.sock"), "k8s.io", (str(tmp_path / "fake" / "ctr"),)).open_blob("sha256:" + "1" * 64)

    assert stream.read(11) == b"first bytes"
    with pytest.raises(EngineError, match=r"^ctr content get sha256:111111111111 sent nothing for 1 s on .*x\.sock, "
                                          r"so deltaimg stopped it; is containerd stuck\?"):
        stream.read(1)
    stream.close()
    assert len(spawned(env)) == 2 and [pid for pid in spawned(env) if running(pid)] == []
