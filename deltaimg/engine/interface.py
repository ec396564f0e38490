"""The one interface deltaimg needs of a container engine.

Reading a base image (images/daemon), loading a target (apply/engine), recreating containers
(apply/swap), settling an interrupted run (apply/recovery) and the unattended run see an engine
only through this Protocol. An adapter (Docker's SDK today; Podman's API or containerd next)
implements it and turns every failure of its engine into an :class:`deltaimg.errors.EngineError`
with a one-line message, so nothing above this package knows which engine it talks to.

Image and container records are the Docker Engine API's inspect and list shapes (``Id``,
``RepoTags``, ``RootFS.Layers``; ``Name``, ``Image``, ``Config``, ``HostConfig``, ``State``,
``Mounts``, ``NetworkSettings``), which Podman's compatible API shares.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterable, Iterator, Protocol


class Engine(Protocol):
    name: str  # for messages: "Docker", "Podman"

    # -- images
    def find_image(self, image_id_or_ref: str) -> dict | None:
        """The image's inspect record, or None when the engine has no such image."""

    def tagged_images(self) -> list[dict]:
        """The images ``docker images`` lists (with ``Id``, ``RepoTags``)."""

    def all_images(self) -> list[dict]:
        """Every image, tagged or not (with ``Id``, ``Created`` as a Unix time)."""

    def read_config(self, image_ref: str, names: dict[str, str] | None = None) -> bytes:
        """The exact config bytes of an image."""

    def export_layers(self, image_id: str, wanted_diff_ids: set[str], names: dict[str, str]) -> Iterator[tuple[str, BinaryIO]]:
        """Each wanted layer of the image once, as (diff_id, stream of its tar), checked against its diff_id."""

    def load_archive(self, stream_or_path: BinaryIO | str | os.PathLike) -> list[str]:
        """Load a ``docker save`` archive; the names of what was loaded."""

    def loads_thin_archives(self) -> bool:
        """Whether a load may leave out the layers the engine holds."""

    def tag(self, image_id: str, tags: Iterable[str]) -> None:
        """Point each ``repo[:tag]`` at the image."""

    def data_root(self) -> str | None:
        """The folder the engine keeps its images in, when it says."""

    # -- containers
    def containers(self) -> list[dict]:
        """Every container, running or not (list records: ``Id``, ``Names``, ``ImageID``)."""

    def inspect_container(self, ref: str) -> dict | None:
        """The container's inspect record, or None when there is no such container."""

    def create_container(self, body: dict, name: str) -> str:
        """Create a container from a raw ``/containers/create`` body; its ID."""

    def connect_network(self, container_id: str, network: str, endpoint: dict) -> None:
        """Attach the container to ``network`` with an inspect-style EndpointConfig."""

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout: int) -> None: ...

    def rename(self, container_id: str, name: str) -> None: ...

    def remove_container(self, container_id: str, force: bool = False) -> None:
        """Remove the container, never its volumes."""

    def remove_volume(self, name: str) -> None:
        """Remove a volume; one that is gone already or in use is left alone."""

    def last_output(self, container_id: str) -> str:
        """The container's last log line ("" when there is none or it cannot be read)."""
