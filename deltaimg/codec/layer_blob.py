"""A layer blob as its tar: plain, gzip or zstd, decoded as it streams.

Image archives and layouts say a blob's compression by its first bytes (images/blobs), a content
store by its descriptor's media type (engine/containerd, engine/docker_cstore); both decode here.
Closing the decoded stream closes the raw one under it (a file, or a ``ctr`` process to stop).
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import BinaryIO, Callable

from deltaimg.zstdlib import zstd

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_WINDOW_LOG_MAX = 27  # what `zstd -d` accepts without --long: a 128 MiB window at most
PLAIN, GZIP, ZSTD = "plain", "gzip", "zstd"


def by_head(head: bytes) -> str:
    """The compression a blob starting with ``head`` (its first 4 bytes) was stored with."""
    if head.startswith(GZIP_MAGIC):
        return GZIP
    return ZSTD if head[:4] == ZSTD_MAGIC else PLAIN


def by_media_type(media_type: str) -> str | None:
    """The compression an OCI or Docker layer media type names (``...tar``, ``+gzip``/``.gzip``,
    ``+zstd``); None for one that is no layer deltaimg reads."""
    if media_type.endswith("gzip"):
        return GZIP
    if media_type.endswith("zstd"):
        return ZSTD
    return PLAIN if media_type.endswith("tar") else None


def decoded(raw: BinaryIO, compression: str, failed: Callable[[str], Exception]) -> BinaryIO:
    """``raw`` decompressed as it is read; a decoding failure (a damaged blob) raises
    ``failed(reason)``. Closing the result closes ``raw``."""
    if compression == PLAIN:
        return raw
    if compression == GZIP:
        decoder: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    else:
        options = {zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
        decoder = zstd.ZstdFile(raw, "rb", options=options)  # type: ignore[assignment]
    return io.BufferedReader(_Decoded(decoder, raw, failed), buffer_size=1 << 20)  # type: ignore[return-value]


class _Decoded(io.RawIOBase):
    def __init__(self, decoder: BinaryIO, raw: BinaryIO, failed: Callable[[str], Exception]) -> None:
        self._decoder = decoder
        self._raw = raw
        self._failed = failed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            return self._decoder.readinto(buffer)  # type: ignore[attr-defined]
        except (OSError, EOFError, zlib.error, zstd.ZstdError) as exc:
            raise self._failed(str(exc)) from None

    def close(self) -> None:
        try:
            self._decoder.close()
        finally:
            self._raw.close()
            super().close()
