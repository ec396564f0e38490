"""``deltaimg apply --engine k3s``: k3s's containerd through ``k3s ctr``.

k3s cannot run here, so a fake ``k3s`` first on the PATH stands for it: ``k3s ctr ARGS`` execs the
real ctr (what k3s's built-in ctr is), against the private containerd of the test, named with the
socket override ``--engine k3s=SOCKET``. A ``ctr`` next to it fails, so a call that bypassed
``k3s ctr`` would show.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from deltaimg.engine import choose
from deltaimg.engine.containerd import normalize_ref
from deltaimg.errors import EngineError
from tests.conftest import run_cli
from tests.containerd_helpers import containerd_pair, containerd_service, import_base  # noqa: F401


@pytest.fixture
def fake_k3s(tmp_path):
    real = shutil.which("ctr")
    if real is None:
        pytest.fail("ctr is missing (scripts/test installs Debian's containerd)")
    folder = tmp_path / "k3s-bin"
    folder.mkdir()
    calls = folder / "calls"
    (folder / "k3s").write_text(f'#!/bin/sh\n[ "$1" = ctr ] || exit 64\nshift\necho "$*" >> {calls}\n'
                                f'exec {real} "$@"\n')
    (folder / "ctr").write_text('#!/bin/sh\necho "not k3s ctr: $*" >&2\nexit 99\n')
    for script in ("k3s", "ctr"):
        (folder / script).chmod(0o755)
    return {"folder": folder, "calls": calls}


def test_apply_into_k3s_goes_through_k3s_ctr_and_a_pod_can_run_the_new_layer(containerd_service, containerd_pair,
                                                                            keypair, fake_k3s):
    service, pair = containerd_service, containerd_pair
    import_base(service, pair)
    result = run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", f"k3s={service.socket}",
                     env={"PATH": f"{fake_k3s['folder']}:{os.environ['PATH']}"})

    assert result.returncode == 0, result.stderr
    calls = fake_k3s["calls"].read_text().splitlines()
    assert calls[0] == f"--address {service.socket} --namespace k8s.io version"
    assert f"--address {service.socket} --namespace k8s.io images import -" in calls
    ref = normalize_ref(pair["tag"]["v2"])
    assert service.engine.find_image(ref)["Id"] == pair["v2"]  # listed in k8s.io, with the target's ID
    run = subprocess.run(service.ctr.argv("run", "--rm", "--cgroup", "", ref, "deltaimg-k3s-run", "cat", "/only-new"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "new-layer-only\n"


def test_k3s_means_its_socket_and_namespace_and_plain_ctr_without_a_k3s_command(fake_k3s, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_k3s["folder"]))
    with pytest.raises(EngineError, match=r"^cannot reach containerd at /run/k3s/containerd/containerd\.sock \("):
        choose.connect("k3s")
    assert fake_k3s["calls"].read_text() == "--address /run/k3s/containerd/containerd.sock --namespace k8s.io version\n"

    (fake_k3s["folder"] / "k3s").unlink()  # no k3s command: the ctr on the PATH, here the failing one
    with pytest.raises(EngineError, match=r"^cannot reach containerd at .*/x\.sock \(not k3s ctr: --address .*/x\.sock "
                                          r"--namespace other version\); "):
        choose.connect(f"k3s={tmp_path}/x.sock,other")
