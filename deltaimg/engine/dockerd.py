"""The Docker engine adapter: the only module that talks to the Engine API (via the ``docker`` SDK).

deltaimg targets engines on the graphdriver store (Docker 20.10 to 28 with overlay2), where an
image ID is the sha256 of its config bytes and ``docker load`` skips every layer whose chain ID
the engine already holds. That last property is what makes thin archives (every layer listed in
``manifest.json``, only the missing ones present) loadable.

Exports are streamed: ``docker save`` output is read through a streaming tar reader in bounded
chunks, so neither memory nor disk ever holds the whole export.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from typing import BinaryIO, Iterable, Iterator

import docker
import docker.errors
import requests

from deltaimg.engine.docker_store import DockerStore, chain_ids
from deltaimg.errors import EngineError, ImageReadError, IntegrityError
from deltaimg.streams import ChunkReader, HashingReader

CHUNK = 1 << 20
MAX_CONFIG_SIZE = 32 << 20  # a config is JSON metadata; anything this big is not one
# One Engine API call may legitimately stay silent for a while (a slow disk registering a large
# layer during ``docker load``); the SDK's 60 s default is too tight for edge hosts.
API_TIMEOUT = 300
PROBE_TIMEOUT = 15  # an engine that does not answer a ping this fast is not there


def connect() -> DockerEngine:
    """The engine named by the environment (``DOCKER_HOST`` etc., else the local socket).
    ``DELTAIMG_READ_STORE=0`` keeps deltaimg out of the engine's store: every read is a ``docker save``."""
    try:
        client = docker.from_env(timeout=PROBE_TIMEOUT)
        client.ping()
        client.api.timeout = API_TIMEOUT
    except (docker.errors.DockerException, requests.RequestException) as exc:
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EngineError(
            f"cannot reach the Docker engine at {host} ({one_line(exc)}); start dockerd "
            "(scripts/ensure-docker does) or point DOCKER_HOST at a running engine"
        ) from None
    return DockerEngine(client, read_store=os.environ.get("DELTAIMG_READ_STORE", "1") != "0")


class DockerEngine:
    """:class:`deltaimg.engine.interface.Engine` over the Docker SDK: Docker, or Podman's
    Docker-compatible API. Every failure of the engine is an :class:`EngineError`."""

    name = "Docker"
    swaps_containers = True

    def __init__(self, client: docker.DockerClient, read_store: bool = True) -> None:
        """``read_store`` False: always ``docker save``, never the store in place (benchmarks compare both)."""
        self.client = client
        self._read_store = read_store
        self._store: DockerStore | None = None
        self._store_checked = False

    def _layer_store(self) -> DockerStore | None:
        """The engine's overlay2 store, when deltaimg runs as root next to an engine on a local socket."""
        if not self._store_checked:
            self._store_checked = True
            local = str(getattr(self.client.api, "base_url", "")).startswith("http+docker://localhost")
            if self._read_store and local and os.geteuid() == 0:
                with _engine_errors("cannot ask the engine for its store"):
                    info = self.client.info()
                self._store = DockerStore.open(info.get("DockerRootDir"), info.get("Driver"))
        return self._store

    def find_image(self, image_id_or_ref: str) -> dict | None:
        """The engine's inspect data for an image, or None when the engine has no such image."""
        with _engine_errors(f"cannot inspect image {image_id_or_ref}"):
            try:
                return self.client.api.inspect_image(image_id_or_ref)
            except docker.errors.ImageNotFound:
                return None

    def tagged_images(self) -> list[dict]:
        """The engine's tagged images (the list ``docker images`` shows)."""
        with _engine_errors("cannot list the engine's images"):
            return self.client.api.images()

    def read_config(self, image_ref: str, names: dict[str, str] | None = None) -> bytes:
        """The exact config bytes of an image (the Engine API has no call for them but ``docker save``).

        The export is read until the config goes by, then aborted; the layers stream past unstored.
        Given ``names`` (see :func:`export_layers`), a legacy export is read to its end and every
        ``layer.tar`` hashed on the way, so that later exports of the image need no extra pass.
        """
        attrs = self.find_image(image_ref)
        if attrs is None:
            raise ImageReadError(f"docker-daemon:{image_ref}: the engine has no such image (see docker images)")
        image_id = attrs["Id"]
        store = self._layer_store()
        in_store = store.config(image_id) if store is not None else None
        if in_store is not None:
            return in_store
        image_hex = image_id.removeprefix("sha256:")
        config_names = {f"{image_hex}.json", f"blobs/sha256/{image_hex}"}
        config_bytes: bytes | None = None
        with self._export(image_id) as archive:  # by ID, not by name: the image inspected above
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if name in config_names:
                    config_bytes = _read_config_member(archive, member, image_id)
                    if names is None or name.startswith("blobs/"):  # the OCI form names its layers by digest
                        break
                elif names is not None and name.endswith("/layer.tar"):
                    reader = HashingReader(_extract(archive, member))
                    reader.drain()
                    names[name] = reader.digest.hexdigest()
        if config_bytes is None:
            raise EngineError(f"docker save of {image_ref} holds no config {image_hex}.json; is the engine 20.10+?")
        return config_bytes

    def export_layers(self, image_id: str, wanted_diff_ids: set[str], names: dict[str, str]) -> Iterator[tuple[str, BinaryIO]]:
        """Stream ``docker save`` of image ``image_id`` and yield each wanted layer once as
        ``(diff_id, stream of its tar)``, in the order of the export, storing nothing.

        Read each stream before asking for the next: what the caller leaves unread is read here, and
        the layer must hash to its diff_id or :class:`IntegrityError` ends the export. A legacy
        export names its ``layer.tar`` files by IDs that say nothing of their content: ``names`` maps
        those member names to the digests found by hashing them. It is filled in on the way, and a
        wanted layer that was not yet in it costs one more export; keep it for the next call on the
        same image. The read stops, aborting the export, once every wanted layer went by.
        """
        from_store = self._store_layers(image_id, wanted_diff_ids)
        if from_store is not None:
            yield from from_store
            return
        wanted = {d.removeprefix("sha256:") for d in wanted_diff_ids}
        seen: set[str] = set()
        for _ in range(2):
            learned = False
            with self._export(image_id) as archive:
                for member in archive:
                    name = member.name.removeprefix("./")
                    if not wanted - seen:
                        break
                    if not member.isfile() or not _may_be_wanted(name, wanted - seen):
                        continue
                    reader = HashingReader(_EngineStream(_extract(archive, member), image_id))
                    if name.endswith("/layer.tar") and name not in names:
                        reader.drain()
                        names[name], learned = reader.digest.hexdigest(), True
                        continue
                    hexdigest = names.get(name) or os.path.basename(name).removesuffix(".tar")
                    if hexdigest not in wanted or hexdigest in seen:
                        continue
                    yield "sha256:" + hexdigest, reader  # type: ignore[misc]
                    reader.drain()
                    if reader.digest.hexdigest() != hexdigest:
                        raise IntegrityError(f"docker save of {image_id} gave a layer {hexdigest[:12]} that does not "
                                             "hash to it; the engine's layer store may be damaged")
                    seen.add(hexdigest)
            if not learned:
                break
        if wanted - seen:
            missing = ", ".join("sha256:" + h for h in sorted(wanted - seen))
            raise IntegrityError(f"docker save of {image_id} holds no layer hashing to {missing}; the engine's "
                                 "layer store may be damaged (re-pull or reload the image)")

    def _store_layers(self, image_id: str, wanted_diff_ids: set[str]) -> Iterator[tuple[str, BinaryIO]] | None:
        """The wanted layers read from the store in place, or None when it cannot give all of them
        (no store, another engine's, a record missing): then ``docker save`` does."""
        store = self._layer_store()
        if store is None or store.config(image_id) is None:  # the config there proves it is this image's store
            return None
        diff_ids = ((self.find_image(image_id) or {}).get("RootFS") or {}).get("Layers") or []
        chains = dict(zip(diff_ids, chain_ids(diff_ids)))
        wanted = {d if d.startswith("sha256:") else "sha256:" + d for d in wanted_diff_ids}
        if not wanted <= chains.keys():
            return None
        streams = {d: store.layer(chains[d]) for d in chains if d in wanted}  # in layer order
        if any(stream is None for stream in streams.values()):
            return None
        return _checked(image_id, streams)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _export(self, image_id: str) -> Iterator[tarfile.TarFile]:
        """``docker save`` of one image as a streaming tar; the engine's failures, when it starts or
        while it is read, as :class:`EngineError`. Leaving early aborts the export."""
        try:
            chunks = self.client.api.get_image(image_id, chunk_size=CHUNK)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"docker save of {image_id} failed: {one_line(exc)}") from None
        try:
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r|", bufsize=CHUNK) as archive:
                yield archive
        except (docker.errors.DockerException, requests.RequestException, tarfile.TarError, OSError) as exc:
            raise EngineError(f"docker save of {image_id} failed: {one_line(exc)}") from None
        finally:
            chunks.close()

    def load_archive(self, stream_or_path: BinaryIO | str | os.PathLike) -> list[str]:
        """``docker load`` an archive (a file path or a binary stream); return what the engine loaded.

        The archive may be thin: the engine skips every layer whose chain ID it already holds, so the
        layers it holds need not be in the archive. Returns the ``Loaded image`` names the engine
        reports (``repo:tag``, or ``sha256:...`` for an untagged image).
        """
        if not isinstance(stream_or_path, (str, os.PathLike)):
            return self._load(stream_or_path, "the archive")
        path = os.fspath(stream_or_path)
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise ImageReadError(f"cannot open {path}: {exc.strerror}") from None
        with stream:
            return self._load(stream, path)

    def loads_thin_archives(self) -> bool:
        """Whether the engine's load accepts an archive without the layers it already holds.

        Docker's graphdriver store does; Podman's Docker-compatible API does not.
        """
        with _engine_errors("cannot ask the engine its version"):
            components = self.client.version().get("Components") or []
        return not any("podman" in str(c.get("Name", "")).lower() for c in components)

    def layer_blobs(self, image_id: str) -> list[dict] | None:
        """None: Docker loads docker save archives only (thin ones, see :meth:`loads_thin_archives`)."""
        return None

    def tag(self, image_id: str, tags: Iterable[str]) -> None:
        """Point each ``repo[:tag]`` at ``image_id`` (moving it if it names another image)."""
        for name in tags:
            repo, version = docker.utils.parse_repository_tag(name)
            with _engine_errors(f"cannot tag {image_id} as {name}"):
                self.client.api.tag(image_id, repo, version or "latest", force=True)

    def _load(self, stream: BinaryIO, what: str) -> list[str]:
        """Send ``stream`` to the engine's load; the names it reports (an adapter may load another way)."""
        # A generator body is sent with chunked encoding in fixed-size reads; handing requests the
        # file object itself would make it iterate a pipe by "lines" of unbounded length.
        body = iter(lambda: stream.read(CHUNK), b"")
        loaded: list[str] = []
        try:
            for message in self.client.api.load_image(body):
                if message.get("error") or message.get("errorDetail"):
                    detail = message.get("errorDetail") or {}
                    reason = one_line(detail.get("message") or message.get("error") or "no reason given")
                    # A missing layer file is what a thin archive whose base the engine lacks gives.
                    hint = "; load its base image first" if "layer.tar: no such file" in reason else ""
                    if "archive/tar:" in reason:  # Go's tar reader refuses a layer that deltaimg carries byte for byte
                        hint = ("; a layer of the image is a tar that Docker's (Go's) tar reader refuses, so no Docker "
                                "can load this image: nothing was changed; rebuild the image with a tool that writes "
                                "standard tars")
                    raise EngineError(f"docker load of {what} failed: {reason}{hint}")
                for line in str(message.get("stream", "")).splitlines():
                    if line.startswith("Error unpacking image"):  # the containerd store imported, then failed
                        raise EngineError(f"docker load of {what} failed: {one_line(line)}")
                    for prefix in ("Loaded image: ", "Loaded image ID: "):
                        if line.startswith(prefix):
                            loaded.append(line[len(prefix):].strip())
        except (docker.errors.DockerException, OSError) as exc:  # OSError: reading the archive, requests' errors
            raise EngineError(f"docker load of {what} failed: {one_line(exc)}") from None
        if not loaded:
            raise EngineError(f"docker load of {what} reported no image; is it a docker save archive?")
        return loaded


    def all_images(self) -> list[dict]:
        with _engine_errors("cannot list the engine's images"):
            return self.client.api.images(all=True)

    def data_root(self) -> str | None:
        with _engine_errors("cannot ask the engine for its data root"):
            return self.client.info().get("DockerRootDir")

    # -- containers

    def containers(self) -> list[dict]:
        with _engine_errors("cannot list containers"):
            return self.client.api.containers(all=True)

    def inspect_container(self, ref: str) -> dict | None:
        with _engine_errors(f"cannot inspect container {ref}"):
            try:
                return self.client.api.inspect_container(ref)
            except docker.errors.NotFound:
                return None

    def create_container(self, body: dict, name: str) -> str:
        with _engine_errors(f"cannot create container {name}"):
            return self.client.api.create_container_from_config(body, name=name)["Id"]

    def connect_network(self, container_id: str, network: str, endpoint: dict) -> None:
        ipam = endpoint.get("IPAMConfig") or {}
        links = [tuple(link.split(":", 1)) if ":" in link else (link, None) for link in endpoint.get("Links") or []]
        with _engine_errors(f"cannot connect {container_id[:12]} to network {network}"):
            self.client.api.connect_container_to_network(
                container_id, network,
                ipv4_address=ipam.get("IPv4Address") or None, ipv6_address=ipam.get("IPv6Address") or None,
                link_local_ips=ipam.get("LinkLocalIPs") or None, aliases=endpoint.get("Aliases"),
                links=links or None, driver_opt=endpoint.get("DriverOpts"),
            )

    def start(self, container_id: str) -> None:
        with _engine_errors(f"cannot start {container_id[:12]}"):
            self.client.api.start(container_id)

    def stop(self, container_id: str, timeout: int) -> None:
        with _engine_errors(f"cannot stop {container_id[:12]}"):
            self.client.api.stop(container_id, timeout=timeout)

    def pause(self, container_id: str) -> None:
        with _engine_errors(f"cannot pause {container_id[:12]}"):
            self.client.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        with _engine_errors(f"cannot unpause {container_id[:12]}"):
            self.client.api.unpause(container_id)

    def rename(self, container_id: str, name: str) -> None:
        with _engine_errors(f"cannot rename {container_id[:12]} to {name}"):
            self.client.api.rename(container_id, name)

    def remove_container(self, container_id: str, force: bool = False) -> None:
        with _engine_errors(f"cannot remove {container_id[:12]}"):
            self.client.api.remove_container(container_id, v=False, force=force)

    def remove_volume(self, name: str) -> None:
        try:
            self.client.api.remove_volume(name)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone already, or in use by another container
                raise EngineError(f"cannot remove volume {name}: {one_line(exc)}", one_line(exc)) from None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"cannot remove volume {name}: {one_line(exc)}", one_line(exc)) from None

    def last_output(self, container_id: str) -> str:
        try:
            tail = self.client.api.logs(container_id, tail=1).decode("utf-8", "replace")
        except (docker.errors.DockerException, requests.RequestException):
            return ""
        return " ".join(tail.split())[:200]


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """The SDK's and the transport's failures as one-line :class:`EngineError`s: ``what: why``."""
    try:
        yield
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"{what}: {one_line(exc)}", one_line(exc)) from None


class _EngineStream:
    """A member of an export being read: a failed read from the engine is an :class:`EngineError`
    wherever the caller reads it."""

    def __init__(self, stream: BinaryIO, image_id: str) -> None:
        self._stream = stream
        self._image_id = image_id

    def read(self, n: int = -1) -> bytes:
        try:
            return self._stream.read(n)
        except (docker.errors.DockerException, requests.RequestException, tarfile.TarError) as exc:
            raise EngineError(f"docker save of {self._image_id} failed: {one_line(exc)}") from None


def _checked(image_id: str, streams: dict[str, BinaryIO]) -> Iterator[tuple[str, BinaryIO]]:
    """Each layer streamed from the store, then checked to hash to its diff_id."""
    for diff_id, stream in streams.items():
        with stream:
            reader = HashingReader(stream)
            yield diff_id, reader  # type: ignore[misc]
            reader.drain()
        if "sha256:" + reader.digest.hexdigest() != diff_id:
            raise IntegrityError(f"Docker's layer store gave layer {diff_id[:19]} of {image_id[:19]} bytes that "
                                 "do not hash to it; the store may be damaged (re-pull or reload the image)")


def _read_config_member(archive: tarfile.TarFile, member: tarfile.TarInfo, image_id: str) -> bytes:
    if member.size > MAX_CONFIG_SIZE:
        raise EngineError(f"the config of {image_id} in docker save is {member.size} bytes; not a config")
    config_bytes = _extract(archive, member).read()
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise IntegrityError(f"the config docker save gave for {image_id} does not hash to that ID")
    return config_bytes


def _may_be_wanted(name: str, wanted: set[str]) -> bool:
    """Whether an export member may be a wanted layer: any legacy ``layer.tar``, a wanted blob
    (Docker 25+), or a wanted ``<diff_id hex>.tar`` (Podman's docker-archive)."""
    if name.endswith("/layer.tar"):
        return True
    if name.startswith("blobs/sha256/"):
        return os.path.basename(name) in wanted
    return "/" not in name and name.endswith(".tar") and name[: -len(".tar")] in wanted


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo) -> BinaryIO:
    source = archive.extractfile(member)
    assert source is not None  # callers pass regular files only
    return source


def one_line(exc: BaseException | str) -> str:
    """An error (an SDK exception, an engine message) as one line, for deltaimg's messages."""
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split()) or type(exc).__name__
