"""Turning stored layer blobs into :class:`Layer` objects."""

from __future__ import annotations

from deltaimg.images.model import Layer
from deltaimg.images.blobs import BlobStore, is_compressed, open_decompressed, open_range


def stored_layer(store: BlobStore, name: str, diff_id: str) -> Layer:
    """A layer whose blob is ``name`` in ``store``; compressed blobs are decompressed on read."""
    path, offset, size = store.local(name)
    if size and is_compressed(path, offset):
        return Layer(diff_id=diff_id, open=lambda: open_decompressed(lambda: open_range(path, offset, size), name))
    return Layer(diff_id=diff_id, open=lambda: open_range(path, offset, size), local=(path, offset, size))
