"""Which engine ``deltaimg apply`` talks to: ``--engine`` (or ``$DELTAIMG_ENGINE``), one word.

``docker`` (the default: ``DOCKER_HOST`` or the local socket), ``podman[=unix:///PATH.sock]``,
``containerd[=SOCKET[,NAMESPACE]]`` (default ``/run/containerd/containerd.sock`` and ``k8s.io``),
``k3s[=SOCKET[,NAMESPACE]]``: k3s's containerd (``/run/k3s/containerd/containerd.sock``, ``k8s.io``)
through ``k3s ctr``, the ctr built into k3s, or ``ctr`` when no ``k3s`` is on the PATH (k3s's
installer links ``ctr`` to k3s unless another ctr is there already, so ``k3s ctr`` comes first).
"""

from __future__ import annotations

import os
import shutil

from deltaimg.engine import containerd, docker_cstore, podman
from deltaimg.engine.ctr import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, K3S_ADDRESS
from deltaimg.engine.interface import Engine
from deltaimg.errors import UsageError, printable


def connect(spec: str | None) -> Engine:
    """The engine ``spec`` names (None: ``$DELTAIMG_ENGINE``, else Docker), reached and checked."""
    value = spec or os.environ.get("DELTAIMG_ENGINE") or "docker"
    kind, _, where = value.partition("=")
    if kind == "docker" and not where:
        return docker_cstore.connect()  # on the graphdriver or the containerd image store
    if kind == "podman":
        return podman.connect(where or podman.DEFAULT_SOCKET)
    if kind == "containerd":
        address, _, namespace = where.partition(",")
        return containerd.connect(address or DEFAULT_ADDRESS, namespace or DEFAULT_NAMESPACE)
    if kind == "k3s":
        address, _, namespace = where.partition(",")
        command = ("k3s", "ctr") if shutil.which("k3s") else ("ctr",)
        return containerd.connect(address or K3S_ADDRESS, namespace or DEFAULT_NAMESPACE, command)
    raise UsageError(f"engine {printable(value)}: give docker, podman[=unix:///PATH.sock], "
                     "containerd[=SOCKET[,NAMESPACE]] or k3s[=SOCKET[,NAMESPACE]] (docker takes DOCKER_HOST)")
