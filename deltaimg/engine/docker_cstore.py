"""Docker on the containerd image store (Docker 29's default; opt-in from Docker 24).

``docker info`` says so: ``DriverStatus`` is ``[["driver-type", "io.containerd.snapshotter.v1"]]``.
There an image is containerd's: a name pointing at a manifest or an index, and the Engine API gives
that target's digest as the image ID (``Id`` and ``Descriptor`` of ``GET /images/{name}/json``), not
the config digest a bundle names. It finds images by that digest or by name only, and no call hands
out a config: ``docker save`` (an OCI layout) is the one way to read the manifest and the config.
So this adapter reads each image's manifest and config from one export (cached for the run: a
manifest digest always names the same config), and gives records with the config digest as ``Id``
(containers: ``ImageID``, ``Image``), as the other adapters do; a create body or a tag naming an
image by config digest goes to the engine with the target digest.

Loads carry every layer. This store imports an archive with ``WithSkipMissing``: a thin load is
accepted without the layers it leaves out, and the image has snapshots but no blobs, which
``docker save`` then leaves out (moby #49473) and a push cannot send. A loaded image passes if the
engine's ``Id`` is the target ID or its manifest's config is the target (read back from its
export): the check every load gets. The engine's "Error unpacking image" line (it imported, then
could not unpack) fails the load.

Looking an image up by config digest reads one ``docker save`` per image until it matches (no API
call gives the config digest); each is read once a run, the last load's names first.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterable, Iterator

import docker
import docker.errors
import requests

from deltaimg.engine import dockerd
from deltaimg.engine.containerd import DIGEST, ContainerdImage, open_layer, read_image
from deltaimg.engine.dockerd import MAX_CONFIG_SIZE, DockerEngine, one_line
from deltaimg.errors import EngineError, ImageReadError, IntegrityError
from deltaimg.streams import HashingReader

SNAPSHOTTER = "io.containerd.snapshotter.v1"
MAX_KEPT = 64 << 20  # the small blobs of one export kept to find its manifest and config


def uses_containerd_store(info: dict) -> bool:
    """Whether ``docker info`` describes an engine on the containerd image store."""
    status = info.get("DriverStatus")
    return isinstance(status, list) and any(
        isinstance(pair, list) and pair[:2] == ["driver-type", SNAPSHOTTER] for pair in status)


def connect() -> DockerEngine:
    """The Docker engine the environment names (see :func:`dockerd.connect`), on whichever store."""
    engine = dockerd.connect()
    try:
        info = engine.client.info()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot ask the engine for its image store: {one_line(exc)}") from None
    return DockerContainerdStore(engine.client) if uses_containerd_store(info) else engine


class DockerContainerdStore(DockerEngine):
    """:class:`DockerEngine` on the containerd image store: full loads, config-digest records."""

    name = "Docker (containerd image store)"

    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client, read_store=False)
        self._images: dict[str, ContainerdImage | None] = {}  # by target digest; None: unreadable
        self._loaded: list[str] = []  # the names the last load reported: looked at first

    # -- images

    def find_image(self, image_id_or_ref: str) -> dict | None:
        record = super().find_image(image_id_or_ref)  # by name, or by the target digest
        if record is not None:
            return self._by_config(record)
        if not DIGEST.fullmatch(image_id_or_ref):
            return None
        for target in self._candidates():
            image = self._image(target)
            if image is not None and image.config_digest == image_id_or_ref:
                found = super().find_image(target)
                return self._by_config(found) if found is not None else None
        return None

    def tagged_images(self) -> list[dict]:
        return [self._by_config(record) for record in super().tagged_images()]

    def all_images(self) -> list[dict]:
        return [self._by_config(record) for record in super().all_images()]

    def read_config(self, image_ref: str, names: dict[str, str] | None = None) -> bytes:
        return self._image_of(image_ref).config_bytes

    def export_layers(self, image_id: str, wanted_diff_ids: set[str], names: dict[str, str]) -> Iterator[tuple[str, BinaryIO]]:
        """Each wanted layer from ``docker save``, its blob decoded by the manifest's media type."""
        image = self._image_of(image_id)
        blobs = {d["digest"].removeprefix("sha256:"): (diff_id, d)
                 for diff_id, d in zip(image.diff_ids, image.layer_descriptors) if diff_id in wanted_diff_ids}
        seen: set[str] = set()
        with self._export(image.manifest_digest) as archive:
            for member in archive:
                hexdigest = member.name.removeprefix("./").removeprefix("blobs/sha256/")
                if not member.isfile() or hexdigest not in blobs or blobs[hexdigest][0] in seen:
                    continue
                diff_id, descriptor = blobs[hexdigest]
                member_stream = archive.extractfile(member)
                assert member_stream is not None
                with open_layer(lambda _: member_stream, descriptor, "docker save") as stream:  # type: ignore[arg-type,return-value]
                    reader = HashingReader(stream)
                    yield diff_id, reader  # type: ignore[misc]
                    reader.drain()
                if "sha256:" + reader.digest.hexdigest() != diff_id:
                    raise IntegrityError(f"docker save of {image_id[:19]} gave blob {hexdigest[:12]}, which does not "
                                         f"decompress to layer {diff_id[:19]}; the engine's store may be damaged")
                seen.add(diff_id)
                if seen == wanted_diff_ids:
                    break
        if wanted_diff_ids - seen:  # moby #49473: the store kept the layers' snapshots, not their blobs
            missing = sorted(wanted_diff_ids - seen)
            raise EngineError(f"docker save of {image_id[:19]} lacks {len(missing)} layer blob(s), {missing[0][:19]} first: "
                              "this store can keep a layer's snapshot without its blob (moby #49473); docker load "
                              "a full archive of that image, then run apply again")

    def loads_thin_archives(self) -> bool:
        return False  # moby #49473: a thin load can leave the image incomplete on this store

    def load_archive(self, stream_or_path: BinaryIO | str | object) -> list[str]:
        self._loaded = super().load_archive(stream_or_path)  # type: ignore[arg-type]
        return self._loaded

    def tag(self, image_id: str, tags: Iterable[str]) -> None:
        super().tag(self._target_of(image_id), tags)

    # -- containers: their image as its config digest

    def containers(self) -> list[dict]:
        return [{**c, "ImageID": self._config_id(str(c.get("ImageID", "")))} for c in super().containers()]

    def inspect_container(self, ref: str) -> dict | None:
        info = super().inspect_container(ref)
        return None if info is None else {**info, "Image": self._config_id(str(info.get("Image", "")))}

    def create_container(self, body: dict, name: str) -> str:
        return super().create_container({**body, "Image": self._target_of(str(body.get("Image", "")))}, name)

    # -- reading

    def _candidates(self) -> list[str]:
        """Target digests to look a config digest up in: the last load's names first."""
        targets = [r["Id"] for r in (super(DockerContainerdStore, self).find_image(n) for n in self._loaded) if r]
        targets += [r["Id"] for r in super().all_images()]
        return list(dict.fromkeys(t for t in targets if DIGEST.fullmatch(str(t))))

    def _by_config(self, record: dict) -> dict:
        """The engine's record with ``Id`` the config digest (kept the target's when unreadable)."""
        target = str(record.get("Id", ""))
        image = self._image(target) if DIGEST.fullmatch(target) else None
        return {**record, "Id": image.config_digest, "Descriptor": record.get("Descriptor")} if image else record

    def _config_id(self, target: str) -> str:
        image = self._image(target) if DIGEST.fullmatch(target) else None
        return image.config_digest if image else target

    def _target_of(self, image_id: str) -> str:
        """The target digest the engine knows an image by, for a config digest read this run."""
        return next((t for t, i in self._images.items() if i is not None and i.config_digest == image_id), image_id)

    def _image_of(self, image_ref: str) -> ContainerdImage:
        record = self.find_image(image_ref)
        image = self._image(self._target_of(record["Id"])) if record is not None else None
        if image is None:
            raise ImageReadError(f"docker-daemon:{image_ref}: the engine has no such image (see docker images)")
        return image

    def _image(self, target: str) -> ContainerdImage | None:
        if target not in self._images:
            try:
                self._images[target] = self._read_export(target)
            except (ImageReadError, IntegrityError):
                self._images[target] = None
        return self._images[target]

    def _read_export(self, target: str) -> ContainerdImage:
        """The manifest and config of the image ``target`` names, from its ``docker save``: its
        small blobs are kept as they go by (the layers stream past), then read as containerd's."""
        kept: dict[str, bytes] = {}
        total = 0
        with self._export(target) as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith("blobs/sha256/") and member.size <= MAX_CONFIG_SIZE \
                        and total + member.size <= MAX_KEPT:
                    source = archive.extractfile(member)
                    assert source is not None
                    kept["sha256:" + name.removeprefix("blobs/sha256/")] = source.read()
                    total += member.size

        def blob(digest: str) -> bytes:
            data = kept.get(digest)
            if data is None or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise ImageReadError(f"docker save of {target[:19]} lacks blob {digest[:19]}")
            return data

        return read_image(target, blob)

