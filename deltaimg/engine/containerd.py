"""The containerd adapter: the only module that talks to containerd, through its ``ctr`` command.

containerd keeps an image as a manifest (or an index of them) in its content store, next to the
config and layer blobs it names, plus one unpacked snapshot per layer chain. Its image ID is the
manifest's (or index's) digest; the config digest, which is the Docker image ID a bundle names,
is read from the manifest. Base layers are read from the content store (``ctr content get``),
decompressed as they stream; nothing is stored.

``ctr`` rather than containerd's gRPC API: it ships with every containerd (``k3s ctr`` on k3s),
needs no Python dependency, and its import reads the OCI archives deltaimg writes. Every call
names the socket (``--address``) and the namespace (``k8s.io``, Kubernetes' CRI's, by default).
"""

from __future__ import annotations

import hashlib
import io
import platform
import subprocess
from dataclasses import dataclass, field
from typing import BinaryIO

from deltaimg.errors import EngineError, ImageReadError, IntegrityError, printable
from deltaimg.images.blobs import MAX_METADATA_BYTES, open_decompressed
from deltaimg.images.model import Image, Layer, config_diff_ids, is_digest, load_json

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
K3S_ADDRESS = "/run/k3s/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
MAX_LISTING = 64 << 20  # `ctr images ls` of a host with tens of thousands of images
MAX_LAYERS = 1000  # more layers than any engine mounts
MAX_INDEX_ENTRIES = 1 << 12
CALL_TIMEOUT = 3600  # an import of a large image on a slow disk
CHUNK = 1 << 20
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class Ctr:
    """How to reach one containerd namespace: ``command`` is ``ctr`` (``k3s ctr`` on k3s)."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    command: tuple[str, ...] = ("ctr",)

    def argv(self, *args: str) -> list[str]:
        return [*self.command, "--address", self.address, "--namespace", self.namespace, *args]

    def run(self, *args: str, cap: int = MAX_METADATA_BYTES) -> bytes:
        """Run ``ctr ARGS``; its stdout (at most ``cap`` bytes), or :class:`EngineError` naming what failed."""
        what = " ".join(args[:2])
        try:
            process = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]} ({exc.strerror}); install containerd's ctr "
                              "or pass the ctr command of your distribution (k3s ctr)") from None
        assert process.stdout is not None and process.stderr is not None
        output = process.stdout.read(cap + 1)
        if len(output) > cap:
            process.kill()
            process.wait()
            raise EngineError(f"ctr {what} printed more than {cap} bytes; that is no answer of containerd's")
        try:
            errors = process.communicate(timeout=CALL_TIMEOUT)[1]
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise EngineError(f"ctr {what} did not finish within {CALL_TIMEOUT} s; is containerd stuck?") from None
        if process.returncode != 0:
            raise EngineError(f"ctr {what} failed on {self.address}: {_one_line(errors)}")
        return output

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of one blob of the content store (``ctr content get``), read as it comes."""
        try:
            process = subprocess.Popen(self.argv("content", "get", digest), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]} ({exc.strerror})") from None
        return io.BufferedReader(_BlobStream(process, digest, self.address), buffer_size=CHUNK)  # type: ignore[return-value]


@dataclass
class ContainerdImage:
    """An image as containerd holds it: its reference, the digest containerd calls its ID (the
    manifest's or index's), the platform's manifest and its exact config bytes."""

    ref: str
    target_digest: str
    manifest: dict
    config_bytes: bytes
    layer_descriptors: list[dict] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()


def connect(address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE,
            command: tuple[str, ...] = ("ctr",)) -> Ctr:
    """A checked way to containerd: ``ctr version`` must reach the daemon."""
    ctr = Ctr(address, namespace, command)
    try:
        ctr.run("version")
    except EngineError as exc:
        raise EngineError(f"cannot reach containerd at {address} ({exc}); start containerd or pass --address "
                          f"(k3s: {K3S_ADDRESS})") from None
    return ctr


def image_refs(ctr: Ctr) -> dict[str, str]:
    """Every image reference of the namespace, with the digest it points at."""
    refs: dict[str, str] = {}
    for line in ctr.run("images", "ls", cap=MAX_LISTING).decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and is_digest(fields[2]):
            refs[fields[0]] = fields[2]
    return refs


def read_image(ctr: Ctr, ref: str, digest: str) -> ContainerdImage:
    """The image ``ref`` points at (``digest``): this host's platform's manifest and its config."""
    manifest = _manifest_for_platform(ctr, digest, ref)
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not (isinstance(config, dict) and is_digest(config.get("digest")) and isinstance(layers, list)
            and len(layers) <= MAX_LAYERS and all(isinstance(d, dict) and is_digest(d.get("digest")) for d in layers)):
        raise ImageReadError(f"containerd:{printable(ref)}: its manifest is malformed")
    config_bytes = ctr.run("content", "get", config["digest"])
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != config["digest"]:
        raise IntegrityError(f"containerd:{printable(ref)}: its config does not hash to {config['digest'][:19]}; "
                             "the content store may be damaged")
    if len(config_diff_ids(config_bytes, f"containerd:{printable(ref)}")) != len(layers):
        raise ImageReadError(f"containerd:{printable(ref)}: its manifest and config list different layer counts")
    return ContainerdImage(ref, digest, manifest, config_bytes, list(layers))


def find_image(ctr: Ctr, config_digest: str, hints: list[str] = ()) -> ContainerdImage | None:  # type: ignore[assignment]
    """The namespace's image whose config digest (Docker image ID) is ``config_digest``; the
    references in ``hints`` are looked at first. None when there is none."""
    refs = image_refs(ctr)
    ordered = [r for r in hints if r in refs] + [r for r in refs if r not in hints]
    seen: set[str] = set()
    for ref in ordered:
        if refs[ref] in seen:
            continue
        seen.add(refs[ref])
        try:
            image = read_image(ctr, ref, refs[ref])
        except (ImageReadError, EngineError):  # another platform only, or a broken image: not ours
            continue
        if image.config_digest == config_digest:
            return image
    return None


def as_image(ctr: Ctr, image: ContainerdImage) -> Image:
    """``image`` as an :class:`Image` whose layers stream, decompressed, from the content store."""
    diff_ids = config_diff_ids(image.config_bytes, f"containerd:{printable(image.ref)}")
    layers = [Layer(diff_id=d, open=_opener(ctr, descriptor["digest"]))
              for d, descriptor in zip(diff_ids, image.layer_descriptors)]
    return Image(config_bytes=image.config_bytes, layers=layers, tags=[image.ref], source=f"containerd:{image.ref}")


def import_archive(ctr: Ctr, path: str) -> None:
    """``ctr images import`` an OCI archive; its references come from its index's annotations.
    Unpacking skips every layer whose snapshot the snapshotter already holds."""
    ctr.run("images", "import", path, cap=MAX_LISTING)


def _opener(ctr: Ctr, digest: str):
    return lambda: open_decompressed(lambda: ctr.open_blob(digest), digest[:19])


def _manifest_for_platform(ctr: Ctr, digest: str, ref: str) -> dict:
    document = _json_blob(ctr, digest, ref)
    if document.get("mediaType") not in INDEX_TYPES and "manifests" not in document:
        return document
    entries = document.get("manifests")
    if not isinstance(entries, list) or len(entries) > MAX_INDEX_ENTRIES:
        raise ImageReadError(f"containerd:{printable(ref)}: its index is malformed")
    arch = _ARCH.get(platform.machine(), platform.machine())
    for entry in entries:
        wanted = isinstance(entry, dict) and isinstance(entry.get("platform"), dict) \
            and entry["platform"].get("os") == "linux" and entry["platform"].get("architecture") == arch
        if wanted and is_digest(entry.get("digest")):
            manifest = _json_blob(ctr, entry["digest"], ref)
            if "manifests" not in manifest:
                return manifest
    raise ImageReadError(f"containerd:{printable(ref)}: its index has no linux/{arch} manifest")


def _json_blob(ctr: Ctr, digest: str, ref: str) -> dict:
    data = ctr.run("content", "get", digest)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"containerd:{printable(ref)}: blob {digest[:19]} does not hash to its digest")
    document = load_json(data, f"containerd:{printable(ref)}: manifest {digest[:19]}", "any manifest does")
    if not isinstance(document, dict):
        raise ImageReadError(f"containerd:{printable(ref)}: manifest {digest[:19]} is not a JSON object")
    return document


class _BlobStream(io.RawIOBase):
    """``ctr content get``'s output; a ctr failure, seen at its end, is an :class:`EngineError`.
    Closing early stops ctr."""

    def __init__(self, process: subprocess.Popen, digest: str, address: str) -> None:
        self._process = process
        self._digest = digest
        self._address = address

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        assert self._process.stdout is not None and self._process.stderr is not None
        size = self._process.stdout.readinto(buffer)  # type: ignore[attr-defined]
        if size == 0 and self._process.wait() != 0:
            reason = _one_line(self._process.stderr.read(4096))
            raise EngineError(f"ctr content get {self._digest[:19]} failed on {self._address}: {reason}")
        return size

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()
        super().close()


def _one_line(text: bytes) -> str:
    return printable(" ".join(text.decode("utf-8", "replace").split())) or "no reason given"
