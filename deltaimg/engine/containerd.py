"""The containerd adapter: :class:`ContainerdEngine`, the image half of the Engine interface.

containerd keeps an image as a reference to a manifest (or an index of them) in its content
store, next to the config and layer blobs it names, plus one unpacked snapshot per layer chain.
The Docker image ID a bundle names is the config's digest, read through the manifest. Layers are
read from the content store (``ctr content get``), decompressed as they stream, nothing stored.

Loading takes a ``docker save`` archive or an OCI archive (``ctr images import``, which skips
unpacking every layer whose snapshot exists). A thin OCI archive names the base's layers by the
blobs containerd holds (:meth:`ContainerdEngine.layer_blobs`), so only rebuilt layers are sent.

Containers on containerd belong to an orchestrator (the kubelet, through CRI): the adapter lists
none and creates none (``swaps_containers`` is False); the operator rolls the workloads.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Callable, Iterable, Iterator

from deltaimg.codec import layer_blob

from deltaimg.engine.ctr import MAX_LISTING, Ctr, DEFAULT_ADDRESS, DEFAULT_NAMESPACE, K3S_ADDRESS
from deltaimg.errors import EngineError, ImageReadError, IntegrityError, printable
from deltaimg.safejson import load_json
from deltaimg.streams import HashingReader

MAX_LAYERS = 1000  # more layers than any engine mounts
MAX_INDEX_ENTRIES = 1 << 12
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
_MISSING = re.compile(r"content digest (sha256:[0-9a-f]{64}): not found")  # what ctr says of a missing blob
_UNPACKED = re.compile(r"^unpacking (\S+) \((sha256:[0-9a-f]{64})\)")


@dataclass(frozen=True)
class ContainerdImage:
    """This platform's manifest of an image and its exact config bytes (content-addressed: a
    manifest digest always reads the same)."""

    manifest_digest: str
    config_bytes: bytes
    diff_ids: tuple[str, ...]
    layer_descriptors: tuple[dict, ...]

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()


def connect(address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE,
            command: tuple[str, ...] = ("ctr",)) -> ContainerdEngine:
    """containerd at ``address``, checked: ``ctr version`` must reach the daemon."""
    ctr = Ctr(address, namespace, command)
    try:
        ctr.run("version")
    except EngineError as exc:
        raise EngineError(f"cannot reach containerd at {printable(address)} ({exc.reason}); start containerd or "
                          f"name its socket: --engine containerd=SOCKET (k3s: --engine k3s, {K3S_ADDRESS})") from None
    return ContainerdEngine(ctr)


def normalize_ref(ref: str) -> str:
    """A reference as containerd stores it: ``busybox`` is ``docker.io/library/busybox:latest``."""
    name, _, digest = ref.partition("@")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if not digest and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


class ContainerdEngine:
    """:class:`deltaimg.engine.interface.Engine` over ``ctr``, one namespace. Image records have
    the Docker shape: ``Id`` the config digest, ``RepoTags`` the references, ``RootFS.Layers``."""

    name = "containerd"
    swaps_containers = False

    def __init__(self, ctr: Ctr, warn: Callable[[str], None] | None = None) -> None:
        self.ctr = ctr
        self.warn = warn or _warn
        self._read: dict[str, ContainerdImage | None] = {}  # by manifest digest; None: not this platform's
        self._broken: dict[str, str] = {}  # manifest digest -> why its image cannot be read
        self._warned: set[str] = set()

    # -- images

    def references(self) -> dict[str, str]:
        """Every image reference of the namespace, with the digest it points at."""
        refs: dict[str, str] = {}
        for line in self.ctr.run("images", "ls", cap=MAX_LISTING).decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and DIGEST.fullmatch(fields[2]):
                refs[fields[0]] = fields[2]
        return refs

    def image(self, digest: str) -> ContainerdImage | None:
        """The image a reference's ``digest`` names, for this platform (None: none, or unreadable)."""
        if digest not in self._read:
            try:
                self._read[digest] = self._read_image(digest)
            except ImageReadError:  # malformed, or no manifest of this platform's
                self._read[digest] = None
            except IntegrityError as exc:
                self._read[digest], self._broken[digest] = None, str(exc)
            except EngineError as exc:
                missing = _MISSING.search(exc.reason)
                if missing is None:
                    raise  # containerd itself failed: every lookup would
                self._read[digest], self._broken[digest] = None, f"its content store lacks blob {missing.group(1)[:19]}"
        return self._read[digest]

    def find_image(self, image_id_or_ref: str) -> dict | None:
        records = self._records()
        if DIGEST.fullmatch(image_id_or_ref):
            return next((r for r in records if r["Id"] == image_id_or_ref), None)
        ref = normalize_ref(image_id_or_ref)
        return next((r for r in records if ref in r["RepoTags"]), None)

    def tagged_images(self) -> list[dict]:
        return self._records()

    def all_images(self) -> list[dict]:
        return self._records()

    def read_config(self, image_ref: str, names: dict[str, str] | None = None) -> bytes:
        return self._image_of(image_ref).config_bytes

    def export_layers(self, image_id: str, wanted_diff_ids: set[str], names: dict[str, str]) -> Iterator[tuple[str, BinaryIO]]:
        image = self._image_of(image_id)
        seen: set[str] = set()
        for diff_id, descriptor in zip(image.diff_ids, image.layer_descriptors):
            if diff_id not in wanted_diff_ids or diff_id in seen:
                continue
            seen.add(diff_id)
            with open_layer(self.ctr.open_blob, descriptor, "containerd's content store") as stream:
                reader = HashingReader(stream)
                yield diff_id, reader  # type: ignore[misc]
                reader.drain()
            if "sha256:" + reader.digest.hexdigest() != diff_id:
                raise IntegrityError(f"containerd's blob {descriptor['digest'][:19]} does not decompress to layer "
                                     f"{diff_id[:19]}; the content store may be damaged")

    def layer_blobs(self, image_id: str) -> list[dict] | None:
        """The descriptors of the image's layer blobs in the content store, which a thin OCI
        archive names instead of carrying the layers."""
        return [dict(d) for d in self._image_of(image_id).layer_descriptors]

    def loads_thin_archives(self) -> bool:
        return False  # a docker save archive must carry every layer; a thin one is an OCI archive

    def load_archive(self, stream_or_path: BinaryIO | str | os.PathLike) -> list[str]:
        """``ctr images import`` (a docker save or an OCI archive), then every name it made stored
        as containerd's CRI looks it up (normalized); returns those."""
        if isinstance(stream_or_path, (str, os.PathLike)):
            output = self.ctr.run("images", "import", os.fspath(stream_or_path), cap=MAX_LISTING)
        else:
            output = self.ctr.run("images", "import", "-", cap=MAX_LISTING, stdin=stream_or_path)
        loaded = []
        for line in output.decode("utf-8", "replace").splitlines():
            match = _UNPACKED.match(line)
            if match:
                name = match.group(1)
                if normalize_ref(name) != name:
                    self.ctr.run("images", "tag", "--force", name, normalize_ref(name))
                    self.ctr.run("images", "rm", name)
                loaded.append(normalize_ref(name))
        if not loaded:
            raise EngineError("ctr images import reported no image; is the archive a docker save or OCI archive "
                              "with image names?")
        return loaded

    def tag(self, image_id: str, tags: Iterable[str]) -> None:
        record = self.find_image(image_id)
        if record is None or not record["RepoTags"]:
            raise EngineError(f"containerd's namespace {printable(self.ctr.namespace)} has no image {image_id[:19]} to tag")
        for name in tags:
            if normalize_ref(name) not in record["RepoTags"]:
                self.ctr.run("images", "tag", "--force", record["RepoTags"][0], normalize_ref(name))

    def data_root(self) -> str | None:
        return None  # ctr does not say where containerd's root is

    # -- containers: the orchestrator's

    def containers(self) -> list[dict]:
        return []

    def inspect_container(self, ref: str) -> dict | None:
        return None

    def create_container(self, body: dict, name: str) -> str:
        raise self._no_containers()

    def connect_network(self, container_id: str, network: str, endpoint: dict) -> None:
        raise self._no_containers()

    def start(self, container_id: str) -> None:
        raise self._no_containers()

    def stop(self, container_id: str, timeout: int) -> None:
        raise self._no_containers()

    def pause(self, container_id: str) -> None:
        raise self._no_containers()

    def unpause(self, container_id: str) -> None:
        raise self._no_containers()

    def rename(self, container_id: str, name: str) -> None:
        raise self._no_containers()

    def remove_container(self, container_id: str, force: bool = False) -> None:
        raise self._no_containers()

    def remove_volume(self, name: str) -> None:
        raise self._no_containers()

    def last_output(self, container_id: str) -> str:
        return ""

    # -- reading

    def _no_containers(self) -> EngineError:
        return EngineError("containerd's containers belong to its orchestrator: deltaimg swaps none; roll the "
                           "workloads onto the new image (kubectl set image)")

    def _records(self) -> list[dict]:
        by_id: dict[str, dict] = {}
        for ref, digest in self.references().items():
            image = self.image(digest)
            if digest in self._broken and ref not in self._warned:
                self._warned.add(ref)
                self.warn(f"containerd's image {printable(ref)} cannot be read ({self._broken[digest]}), so deltaimg "
                          f"skips it; pull or import it again, or remove it (ctr -n {printable(self.ctr.namespace)} "
                          f"images rm {printable(ref)})")
            if image is None:
                continue
            record = by_id.setdefault(image.config_digest, _record(image))
            record["RepoTags"].append(ref)
        return list(by_id.values())

    def _image_of(self, image_id_or_ref: str) -> ContainerdImage:
        record = self.find_image(image_id_or_ref)
        if record is None:
            raise ImageReadError(f"containerd:{printable(image_id_or_ref)}: the namespace "
                                 f"{printable(self.ctr.namespace)} has no such image (see ctr images ls)")
        image = self.image(self.references()[record["RepoTags"][0]])
        assert image is not None  # it was read for the record
        return image

    def _read_image(self, digest: str) -> ContainerdImage:
        return read_image(digest, self._blob)

    def _blob(self, digest: str) -> bytes:
        data = self.ctr.run("content", "get", digest)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"containerd's blob {digest[:19]} does not hash to its digest; the content store "
                                 "may be damaged")
        return data


def _warn(message: str) -> None:
    print(f"deltaimg: warning: {message}", file=sys.stderr)


def read_image(digest: str, blob: Callable[[str], bytes]) -> ContainerdImage:
    """The image whose manifest (or index) is ``digest``, for this platform, its blobs read by
    ``blob(digest)`` (which checks that they hash to it)."""
    manifest = _manifest_for_platform(digest, blob)
    config, layers = manifest.get("config"), manifest.get("layers")
    if not (isinstance(config, dict) and _is_digest(config.get("digest")) and isinstance(layers, list)
            and len(layers) <= MAX_LAYERS and all(isinstance(d, dict) and _is_digest(d.get("digest")) for d in layers)):
        raise ImageReadError(f"containerd manifest {digest[:19]} is malformed")
    config_bytes = blob(config["digest"])
    parsed = load_json(config_bytes, f"containerd config {config['digest'][:19]}", "any image config does")
    diff_ids = ((parsed if isinstance(parsed, dict) else {}).get("rootfs") or {}).get("diff_ids")
    if not (isinstance(diff_ids, list) and all(_is_digest(d) for d in diff_ids) and len(diff_ids) == len(layers)):
        raise ImageReadError(f"containerd manifest {digest[:19]}: its config and manifest list different layers")
    return ContainerdImage(digest, config_bytes, tuple(diff_ids), tuple(layers))


def _manifest_for_platform(digest: str, blob: Callable[[str], bytes]) -> dict:
    document = _json_blob(digest, blob)
    if document.get("mediaType") not in INDEX_TYPES and "manifests" not in document:
        return document
    entries = document.get("manifests")
    if not isinstance(entries, list) or len(entries) > MAX_INDEX_ENTRIES:
        raise ImageReadError(f"containerd index {digest[:19]} is malformed")
    arch = _ARCH.get(platform.machine(), platform.machine())
    for entry in entries:
        wanted = isinstance(entry, dict) and isinstance(entry.get("platform"), dict) \
            and entry["platform"].get("os") == "linux" and entry["platform"].get("architecture") == arch
        if wanted and _is_digest(entry.get("digest")):
            manifest = _json_blob(entry["digest"], blob)
            if "manifests" not in manifest:
                return manifest
    raise ImageReadError(f"containerd index {digest[:19]} has no linux/{arch} manifest")


def _json_blob(digest: str, blob: Callable[[str], bytes]) -> dict:
    document = load_json(blob(digest), f"containerd manifest {digest[:19]}", "any manifest does")
    if not isinstance(document, dict):
        raise ImageReadError(f"containerd manifest {digest[:19]} is not a JSON object")
    return document


def _record(image: ContainerdImage) -> dict:
    """The Docker inspect shape of an image (``Created`` as a Unix time, 0 when the config has none)."""
    config = load_json(image.config_bytes, "a containerd config", "any image config does")
    created = config.get("created") if isinstance(config, dict) else None
    try:
        when = datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        when = 0
    return {"Id": image.config_digest, "RepoTags": [], "RepoDigests": [], "Created": int(when),
            "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)}}


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def open_layer(open_blob: Callable[[str], BinaryIO], descriptor: dict, store: str) -> BinaryIO:
    """A layer blob of a content store (``open_blob(digest)``) as its tar, by its media type;
    decoding failures are :class:`ImageReadError`. Closing it closes the blob's stream."""
    digest, media = descriptor["digest"], str(descriptor.get("mediaType", ""))
    compression = layer_blob.by_media_type(media)
    if compression is None:
        raise ImageReadError(f"blob {digest[:19]} of {store} has media type {printable(media)}, which deltaimg "
                             "does not read")
    return layer_blob.decoded(open_blob(digest), compression, lambda reason: ImageReadError(
        f"blob {digest[:19]} of {store} does not decompress ({reason}); the store may be damaged"))
