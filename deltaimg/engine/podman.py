"""What Podman does beyond its Docker-compatible API: loading a *thin* OCI archive.

Podman's Docker-compatible load (and ``podman load``) refuses a docker-archive that lacks any
layer file. Its libpod API's load (``POST /libpod/images/load``, what ``podman load`` calls)
also reads OCI archives, and there a layer blob that is not in the archive is looked up in the
store by its digest: an uncompressed layer named by its diff_id, which the store holds, is
reused. So a thin OCI archive (see :mod:`deltaimg.tar.oci_writer`) whose config bytes are the
target's loads and keeps the target's image ID. Podman copies what it is sent to ``/var/tmp``
before reading it; the thin archive keeps that copy to the rebuilt layers.
"""

from __future__ import annotations

import json
from typing import BinaryIO

import docker
import docker.errors
import requests

from deltaimg.engine.dockerd import API_TIMEOUT, CHUNK, one_line
from deltaimg.errors import EngineError
from deltaimg.tar.oci_writer import MEDIA_LAYER

MAX_ANSWER = 1 << 20  # the load's answer names the loaded images; nothing near this


def held_layer(diff_id: str, size: int) -> dict:
    """The descriptor a thin OCI archive names a layer the store holds by: its uncompressed
    tar, by its diff_id."""
    return {"mediaType": MEDIA_LAYER, "digest": diff_id, "size": size}


def load_oci_archive(client: docker.DockerClient, stream: BinaryIO, what: str) -> list[str]:
    """Load an OCI archive through the libpod API; return the names Podman reports loading."""
    body = iter(lambda: stream.read(CHUNK), b"")
    try:
        response = client.api._post(client.api._url("/libpod/images/load"), data=body,
                                     headers={"Content-Type": "application/x-tar"}, stream=True, timeout=API_TIMEOUT)
        answer = response.raw.read(MAX_ANSWER + 1, decode_content=True)
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise EngineError(f"podman load of {what} failed: {one_line(exc)}") from None
    try:
        document = json.loads(answer) if len(answer) <= MAX_ANSWER else None
    except ValueError:
        document = None
    if response.status_code != 200:
        cause = document.get("cause") or document.get("message") if isinstance(document, dict) else None
        reason = one_line(str(cause or answer[:500].decode("utf-8", "replace")))
        hint = "; load its base image first" if "no such file or directory" in reason and "blobs/sha256/" in reason else ""
        raise EngineError(f"podman load of {what} failed ({response.status_code}): {reason}{hint}")
    names = document.get("Names") if isinstance(document, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise EngineError(f"podman load of {what} reported no image; is the engine Podman 4?")
    return names
