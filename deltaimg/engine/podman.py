"""The Podman adapter: Docker's adapter over Podman's Docker-compatible API, except for loading.

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

from deltaimg.engine.dockerd import API_TIMEOUT, CHUNK, PROBE_TIMEOUT, DockerEngine, one_line
from deltaimg.errors import EngineError, printable
from deltaimg.tar.oci_writer import MEDIA_LAYER

DEFAULT_SOCKET = "unix:///run/podman/podman.sock"
MAX_ANSWER = 1 << 20  # the load's answer names the loaded images; nothing near this


def connect(base_url: str = DEFAULT_SOCKET) -> PodmanEngine:
    """Podman's API service at ``base_url`` (``podman system service`` or podman.socket)."""
    try:
        client = docker.DockerClient(base_url=base_url, timeout=PROBE_TIMEOUT)
        client.ping()
        client.api.timeout = API_TIMEOUT
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot reach Podman at {printable(base_url)} ({one_line(exc)}); start its API service "
                          "(systemctl enable --now podman.socket) or name its socket: --engine podman=unix://PATH") from None
    return PodmanEngine(client)


class PodmanEngine(DockerEngine):
    """Podman through the Docker SDK; loads through the libpod API, thin OCI archives included."""

    name = "Podman"

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client, read_store=False)  # Podman's store is not Docker's overlay2 layout

    def loads_thin_archives(self) -> bool:
        return False  # a docker save archive must carry every layer; a thin one is an OCI archive

    def layer_blobs(self, image_id: str) -> list[dict] | None:
        """containers-storage finds a layer by its uncompressed digest: a thin OCI archive names a
        layer by its diff_id (the writer adds the layer's size)."""
        layers = ((self.find_image(image_id) or {}).get("RootFS") or {}).get("Layers")
        if not isinstance(layers, list):
            raise EngineError(f"Podman does not list the layers of {image_id[:19]}")
        return [{"mediaType": MEDIA_LAYER, "digest": diff_id} for diff_id in layers]

    def _load(self, stream: BinaryIO, what: str) -> list[str]:
        """Load a docker save or an OCI archive through the libpod API; the names Podman reports loading."""
        return load_oci_archive(self.client, stream, what)


def load_oci_archive(client: docker.DockerClient, stream: BinaryIO, what: str) -> list[str]:
    """Load an archive (OCI or docker save) through the libpod API; the names Podman reports loading."""
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
