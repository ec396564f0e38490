"""Which engine ``deltaimg apply`` talks to: ``--engine`` (or ``$DELTAIMG_ENGINE``), one word.

``docker`` (the default: ``DOCKER_HOST`` or the local socket), ``podman[=unix:///PATH.sock]``,
``containerd[=SOCKET[,NAMESPACE]]`` (default ``/run/containerd/containerd.sock`` and ``k8s.io``;
k3s: ``containerd=/run/k3s/containerd/containerd.sock``, with ``ctr`` on the PATH).
"""

from __future__ import annotations

import os

from deltaimg.engine import containerd, docker_cstore, podman
from deltaimg.engine.ctr import DEFAULT_ADDRESS, DEFAULT_NAMESPACE
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
    raise UsageError(f"engine {printable(value)}: give docker, podman[=unix:///PATH.sock] or "
                     "containerd[=SOCKET[,NAMESPACE]] (docker takes DOCKER_HOST)")
