"""Engine apply's load, streamed: the rebuilt target goes into the engine's load as it is written.

No archive is written to disk and read back. A thread writes the thin archive
(:func:`deltaimg.tar.writer.write_image`) into a bounded pipe while the engine's load request
(the Engine API's ``POST /images/load``, a chunked body) sends what the pipe holds, so rebuilding
and the engine's unpacking overlap. Docker 20.10 unpacks the whole upload into a temporary
directory before it reads ``manifest.json`` (which the writer writes last) and registers any
layer: a load cut off before then leaves nothing behind.

Every layer the bundle rebuilt is checked as it streams: its bytes must hash to its diff_id
(the writer's check) and Go's tar reader must accept its headers (:class:`GoTarCheck`). When
one fails, the writer stops before the manifest, the upload raises that error, the HTTP client
closes the connection mid-body, and the engine's load fails having loaded nothing.
"""

from __future__ import annotations

import queue
import threading
from typing import BinaryIO, Callable

from deltaimg import faults
from deltaimg.engine.interface import Engine
from deltaimg.errors import EngineError, IntegrityError
from deltaimg.tar import writer as archivewriter
from deltaimg.tar.gocheck import GoTarCheck
from deltaimg.tar.writer import Fill

from deltaimg.apply.rebuild import Rebuild
from deltaimg.bundle.manifest import Method
from deltaimg.bundle.reader import Bundle
from deltaimg.delta.base_content import BaseContent

PIECE = 1 << 20  # what the writer hands the upload at a time
DEPTH = 8  # pieces in flight: the rebuild runs at most this many MiB ahead of the engine
POLL = 0.1  # seconds between the writer's looks at whether the upload gave up


def load_rebuilt(engine: Engine, bundle: Bundle, rebuild: Rebuild, held: set[int], sources: list,
                 content: BaseContent, log: Callable[[str], None]) -> list[str]:
    """Rebuild the target's layers (``sources``, from :func:`deltaimg.apply.rebuild.layer_sources`)
    straight into the engine's load as a thin ``docker save`` archive: the layers at ``held`` are
    named, not carried. A layer failing its diff_id or Go's tar reader stops the load before the
    manifest, so the engine keeps nothing; a diff_id failure first hashes the base layers read in
    place, so that a damaged base is named as such, not blamed on the bundle. Returns the names
    the engine says it loaded."""
    layers, carried = [], {}
    for position, (diff_id, size, fill) in enumerate(sources):
        if position in held:
            fill = None
        elif fill is not None and rebuild.layers[position].method is Method.DELTA:
            fill = checked_fill(fill, lambda what, p=position, d=diff_id: rejected_layer(rebuild.target.name, p, d, what))
        if fill is not None:
            carried[diff_id] = size
        layers.append((diff_id, size, fill))
    log(f"rebuilding {len(carried)} layer(s) straight into {engine.name}'s load, each checked against its diff_id "
        "as it goes")
    try:
        return load_streamed(engine, lambda out: archivewriter.write_image(out, rebuild.target_config, rebuild.target_tags,
                                                                    layers), sum(carried.values()))
    except IntegrityError:
        content.check_layers_read()
        raise


def rejected_layer(target_name: str, position: int, diff_id: str, problem: str) -> EngineError:
    """A rebuilt layer whose headers Go's tar reader (so docker load) rejects."""
    return EngineError(f"layer {position} ({diff_id}) of {target_name} {problem}, which Docker's tar "
                       "reader rejects, so docker load would fail; nothing was loaded. Make the target image with a "
                       "standard tar writer and make the bundle again")


def load_streamed(engine: Engine, write: Callable[[BinaryIO], None], size: int) -> list[str]:
    """Load into ``engine`` the archive ``write`` writes to the stream it is given, as it is written.

    ``size`` is about the archive's size (the crash tests' ``load`` kill point fires once half of
    it went to the engine). A failure of ``write`` is raised here as it was raised there, after the
    connection was closed before the archive's end; an interrupt (Ctrl-C, SIGTERM) stops the writer
    too. Either way the writer's thread has ended when this returns or raises.
    """
    pipe = _Pipe()

    def produce() -> None:
        try:
            write(pipe)  # type: ignore[arg-type]
        except _Cancelled:
            return
        except BaseException as exc:  # carried to the upload, which raises it in the caller's thread
            pipe.end(exc)
            return
        pipe.end(None)

    thread = threading.Thread(target=produce, name="deltaimg-rebuild", daemon=True)
    thread.start()
    try:
        return engine.load_archive(Upload(pipe, size))  # type: ignore[arg-type]
    except _Failed as failed:
        raise failed.error from None
    finally:
        pipe.cancel()
        thread.join()


def checked_fill(fill: Fill, problem: Callable[[str], EngineError]) -> Fill:
    """``fill`` with Go's tar rules checked on every byte it writes: the first problem found is
    raised (as ``problem(what)``) before those bytes are passed on."""
    def checked(write: Callable[[bytes], object]) -> None:
        check = GoTarCheck()

        def forward(data: bytes) -> None:
            found = check.feed(data)
            if found is not None:
                raise problem(found)
            write(data)

        fill(forward)
        found = check.finish()
        if found is not None:
            raise problem(found)
    return checked


class _Cancelled(Exception):
    """The upload gave up: the writer stops where it is."""


class _Failed(Exception):
    """The writer's failure on its way through the HTTP client. Not an OSError, so the client
    neither retries nor wraps it: it closes the connection mid-body and lets it through."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_END = object()


class _Pipe:
    """Bytes from the writer's thread to the upload, in pieces of about :data:`PIECE`, at most
    :data:`DEPTH` of them waiting."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._buffer = bytearray()
        self._cancelled = threading.Event()
        self._held = memoryview(b"")
        self._ended = False

    # -- the writer's side
    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= PIECE:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def end(self, error: BaseException | None) -> None:
        try:
            if error is None and self._buffer:
                self._put(bytes(self._buffer))
            self._put(_END if error is None else _Failed(error))
        except _Cancelled:
            pass

    def _put(self, item: object) -> None:
        while True:
            if self._cancelled.is_set():
                raise _Cancelled
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    # -- the upload's side
    def read(self, n: int = -1) -> bytes:
        if not self._held and not self._ended:
            item = self._queue.get()
            if item is _END:
                self._ended = True
            elif isinstance(item, _Failed):
                self._ended = True
                raise item
            else:
                self._held = memoryview(item)  # type: ignore[arg-type]
        count = len(self._held) if n is None or n < 0 else min(n, len(self._held))
        data, self._held = bytes(self._held[:count]), self._held[count:]
        return data

    def cancel(self) -> None:
        self._cancelled.set()


class Upload:
    """An archive (a file, or the rebuild's pipe) as the engine's load reads it; the crash tests'
    ``load`` kill point fires once at least half of ``size`` has gone to the engine (each read
    comes after the one before was sent)."""

    def __init__(self, stream: BinaryIO | _Pipe, size: int) -> None:
        self._stream = stream
        self._half = size // 2
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        if self._sent and self._sent >= self._half:
            faults.killpoint("load")
        data = self._stream.read(n)
        self._sent += len(data)
        return data
