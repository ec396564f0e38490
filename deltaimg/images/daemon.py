"""``docker-daemon:REF``: an image held by the local Docker engine.

The Engine API hands out an image's exact config bytes and its uncompressed layers only through
``docker save``, and every ``docker save`` makes the engine export the whole image. So:

* opening the image runs one export to read the config (the layer bytes stream past unstored;
  a legacy export's are hashed on the way, to tell later exports which file is which layer);
* :meth:`Image.layer_streams` streams layers past as an export goes by, storing nothing (make
  reads the base image this way, twice: to index it, then to keep the few byte ranges its deltas
  read; ``deltaimg diff`` reads both images this way);
* the first time a layer is opened, one more export writes the layers (all of them, or those
  named to :meth:`DaemonImage.fetch`: make fetches the target image's changed layers, which it reads
  twice) into a temporary directory the image owns; every later ``Layer.open`` reads its file,
  and ``Layer.local`` then points at it.

Where deltaimg may read Docker's overlay2 store (root, on the engine's host), the engine adapter
reads the config and the layers there in place instead, and none of these exports happens
(:mod:`deltaimg.engine.docker_store`); what the store gives is checked as an export's would be.
Use the image as a context manager (or call
:meth:`DaemonImage.close`) to remove the directory early; it is removed at garbage collection
otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from deltaimg.engine import docker_cstore
from deltaimg.engine.interface import Engine
from deltaimg.errors import ImageReadError, OutputError
from deltaimg.images.model import Image, Layer, config_diff_ids

COPY_CHUNK = 1 << 20


@dataclass
class DaemonImage(Image):
    """An :class:`Image` whose layers are exported from the engine on first need."""

    _fetcher: _LayerFetcher | None = field(default=None, repr=False, compare=False)

    def fetch(self, diff_ids: set[str]) -> None:
        """Export these layers now, in one pass, instead of all layers at the first ``Layer.open``."""
        assert self._fetcher is not None
        self._fetcher.fetch(diff_ids)

    def layer_streams(self, diff_ids: set[str]) -> Iterator[tuple[str, BinaryIO]]:
        """Layers already exported are read from their files; otherwise one more export streams
        past, nothing stored."""
        assert self._fetcher is not None
        if all(layer.local is not None for layer in self.layers if layer.diff_id in diff_ids):
            yield from super().layer_streams(diff_ids)
        else:
            yield from self._fetcher.stream(diff_ids)

    def close(self) -> None:
        """Remove the exported layers; opening a layer afterwards exports it again."""
        if self._fetcher is not None:
            self._fetcher.close()

    def __enter__(self) -> DaemonImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_daemon_image(engine: Engine | None, ref: str, tmp_dir: str | None = None) -> DaemonImage:
    """Open image ``ref`` (name, name:tag or ID) of the engine; ``engine`` None connects to Docker
    as the environment says (``docker-daemon:`` is Docker's transport name).

    ``tmp_dir`` is where the layer directory is made (default: the system temporary directory).
    """
    engine = engine or docker_cstore.connect()
    source = f"docker-daemon:{ref}"
    attrs = engine.find_image(ref)
    if attrs is None:
        raise ImageReadError(f"{source}: the engine has no such image (see docker images)")
    fetcher = _LayerFetcher(engine, attrs["Id"], tmp_dir)
    config_bytes = engine.read_config(attrs["Id"], fetcher.names)
    diff_ids = config_diff_ids(config_bytes, source)
    fetcher.layers = [Layer(diff_id=d, open=_opener(fetcher, d)) for d in diff_ids]
    return DaemonImage(
        config_bytes=config_bytes,
        layers=list(fetcher.layers),
        tags=list(attrs.get("RepoTags") or []),
        source=source,
        _fetcher=fetcher,
    )


def _opener(fetcher: _LayerFetcher, diff_id: str):
    return lambda: fetcher.open(diff_id)


class _LayerFetcher:
    """Exports an image's layers into a private directory, once, on first need.

    It outlives the image object as long as one of its layers is referenced, so layers stay
    readable; the directory goes with the last reference (or at ``close``).
    """

    def __init__(self, engine: Engine, image_id: str, tmp_dir: str | None) -> None:
        self.layers: list[Layer] = []
        self._engine = engine
        self._image_id = image_id
        self._tmp_dir = tmp_dir
        self._dir: str | None = None
        self._cleanup: weakref.finalize | None = None
        self._paths: dict[str, str] = {}
        self.names: dict[str, str] = {}  # a legacy export's layer.tar names -> digests (Engine.export_layers)
        self._lock = threading.Lock()

    def open(self, diff_id: str) -> BinaryIO:
        with self._lock:
            if diff_id not in self._paths:
                self._fetch_locked({layer.diff_id for layer in self.layers})
            path = self._paths[diff_id]
        return open(path, "rb")

    def fetch(self, diff_ids: set[str]) -> None:
        with self._lock:
            self._fetch_locked(diff_ids)

    def stream(self, diff_ids: set[str]) -> Iterator[tuple[str, BinaryIO]]:
        return self._engine.export_layers(self._image_id, diff_ids, self.names)

    def close(self) -> None:
        with self._lock:
            if self._cleanup is not None:
                self._cleanup()
            self._cleanup = None
            self._dir = None
            self._paths.clear()
            for layer in self.layers:
                layer.local = None

    def _fetch_locked(self, diff_ids: set[str]) -> None:
        missing = diff_ids - self._paths.keys()
        if not missing:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="deltaimg-daemon-", dir=self._tmp_dir)
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        written: dict[str, str] = {}
        try:
            # export_layers checks each layer's digest once it is read: the loop ends with all checked
            for diff_id, stream in self._engine.export_layers(self._image_id, missing, self.names):
                written[diff_id] = os.path.join(self._dir, diff_id.removeprefix("sha256:") + ".tar")
                with open(written[diff_id], "wb") as out:
                    while chunk := stream.read(COPY_CHUNK):
                        out.write(chunk)
        except BaseException as exc:
            for path in written.values():
                if os.path.exists(path):
                    os.unlink(path)
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write layers into {self._dir}: {exc.strerror or exc}; free some space "
                                  "there (or in $TMPDIR) and run again") from None
            raise
        self._paths.update(written)
        for layer in self.layers:
            if layer.diff_id in written:
                layer.local = (written[layer.diff_id], 0, os.path.getsize(written[layer.diff_id]))
