"""Running containerd's ``ctr`` command: the only way deltaimg talks to containerd.

``ctr`` rather than containerd's gRPC API: it ships with every containerd (``k3s ctr`` on k3s),
needs no Python dependency, and its import reads the archives deltaimg writes. Every call names
the socket (``--address``) and the namespace (``k8s.io``, Kubernetes' CRI's, by default).

A ctr call has a deadline (``$DELTAIMG_CTR_TIMEOUT`` seconds, else an hour for an import and five
minutes for anything else; a blob stream may sit idle that long): a hung ctr is killed with its
process group and reaped, and so is one interrupted (Ctrl-C, SIGTERM). Its stdout and stderr are
read at once on their own threads, so a chatty ctr cannot block on a full pipe; of stderr only
the end is kept, for the message.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from deltaimg.errors import EngineError, UsageError, printable

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
K3S_ADDRESS = "/run/k3s/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
MAX_ANSWER = 16 << 20  # a manifest, a config, what an import prints
MAX_LISTING = 64 << 20  # `ctr images ls` of a host with tens of thousands of images
IMPORT_TIMEOUT = 3600.0  # an import of a large image on a slow disk
CALL_TIMEOUT = 300.0  # any other call; a blob stream's longest silence
TIMEOUT_VARIABLE = "DELTAIMG_CTR_TIMEOUT"
STDERR_KEPT = 8 << 10  # the end of ctr's stderr, where its error is
CHUNK = 1 << 20


def call_timeout(default: float) -> float:
    """``$DELTAIMG_CTR_TIMEOUT`` seconds when set, else ``default``."""
    value = os.environ.get(TIMEOUT_VARIABLE)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e7:
        raise UsageError(f"{TIMEOUT_VARIABLE}={printable(value)}: give the seconds a ctr call may take (say 600)")
    return seconds


@dataclass(frozen=True)
class Ctr:
    """How to reach one containerd namespace: ``command`` is ``ctr`` (``k3s ctr`` on k3s)."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    command: tuple[str, ...] = ("ctr",)

    def argv(self, *args: str) -> list[str]:
        return [*self.command, "--address", self.address, "--namespace", self.namespace, *args]

    def run(self, *args: str, cap: int = MAX_ANSWER, stdin: BinaryIO | None = None) -> bytes:
        """Run ``ctr ARGS`` (fed ``stdin``, streamed); its stdout (at most ``cap`` bytes), or
        :class:`EngineError` naming what failed."""
        what = " ".join(args[:2])
        limit = call_timeout(IMPORT_TIMEOUT if args[:2] == ("images", "import") else CALL_TIMEOUT)
        call = _Call(self._start(args, stdin is not None), cap, limit)
        try:
            if stdin is not None:
                call.feed(stdin)
            call.finish()
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) or the stream failed: stop ctr too
            call.end(stop=True)
            raise
        call.end(stop=False)
        if call.timed_out:
            raise EngineError(f"ctr {what} did not finish within {limit:g} s on {printable(self.address)}, so "
                              f"deltaimg stopped it; is containerd stuck? (a slow host: set {TIMEOUT_VARIABLE})")
        if call.overflow:
            raise EngineError(f"ctr {what} printed more than {cap} bytes; that is no answer of containerd's")
        if call.process.returncode != 0:
            reason = one_line(bytes(call.errors))
            raise EngineError(f"ctr {what} failed on {printable(self.address)}: {reason}", reason)
        return bytes(call.output)

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of one blob of the content store (``ctr content get``), read as it comes."""
        stream = _BlobStream(self._start(("content", "get", digest), False), digest, self.address,
                             call_timeout(CALL_TIMEOUT))
        return io.BufferedReader(stream, buffer_size=CHUNK)  # type: ignore[return-value]

    def _start(self, args: tuple[str, ...], with_stdin: bool) -> subprocess.Popen:
        """ctr in a process group of its own: killing the group leaves nothing of it behind."""
        try:
            return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                    stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]} ({exc.strerror}); install containerd's ctr "
                              "or name the ctr command of your distribution (k3s ctr)") from None


class _Process:
    """A started ctr: its stderr drained on a thread (the end kept); ``end`` reaps it once, its
    group killed first when stopped early, and at a deadline (``arm``) when it lingers."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.errors = bytearray()
        self.timed_out = False
        self._lock = threading.Lock()
        self._reaped = False
        self._timer: threading.Timer | None = None
        self._threads = [self._thread(self._drain_errors)]

    def _thread(self, target) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    def _drain_errors(self) -> None:
        assert self.process.stderr is not None
        while block := self.process.stderr.read(CHUNK):
            self.errors += block
            del self.errors[:-STDERR_KEPT]

    def arm(self, limit: float) -> None:
        self._timer = threading.Timer(limit, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """SIGKILL ctr's group; until ``end`` reaps ctr its ID cannot name another process."""
        with self._lock:
            if not self._reaped:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def end(self, stop: bool) -> None:
        """Reap ctr (``stop``: kill its group first); then nothing of it is left running."""
        try:
            if stop:
                self.kill()
            os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        finally:
            self.kill()  # what is left of its group
            with self._lock:
                self._reaped = True
            if self._timer is not None:
                self._timer.cancel()
            self.process.wait()
            for thread in self._threads:
                thread.join()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except BrokenPipeError:
                        pass


class _Call(_Process):
    """One ``ctr`` call to its end: stdout kept (at most ``cap`` bytes) on a thread, a deadline."""

    def __init__(self, process: subprocess.Popen, cap: int, limit: float) -> None:
        super().__init__(process)
        self.output = bytearray()
        self.overflow = False
        self._cap = cap
        self._threads.append(self._thread(self._read_output))
        self.arm(limit)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        while block := self.process.stdout.read(CHUNK):
            if len(self.output) + len(block) > self._cap:
                self.overflow = True
                self.kill()
                return
            self.output += block

    def feed(self, stream: BinaryIO) -> None:
        assert self.process.stdin is not None
        try:
            while block := stream.read(CHUNK):
                self.process.stdin.write(block)
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # ctr stopped reading (or was stopped): its exit status and stderr say why

    def finish(self) -> None:
        """Wait until ctr closed its output (it ended, or the deadline killed it)."""
        for thread in self._threads:
            thread.join()


class _BlobStream(io.RawIOBase):
    """``ctr content get``'s output; a ctr failure, seen at its end, is an :class:`EngineError`,
    and so is ctr sending nothing for ``idle`` seconds. Closing early stops ctr."""

    def __init__(self, process: subprocess.Popen, digest: str, address: str, idle: float) -> None:
        self._ctr = _Process(process)
        self._digest = digest
        self._address = address
        self._idle = idle
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._ended:
            return 0  # at its end already
        process = self._ctr.process
        assert process.stdout is not None
        deadline = time.monotonic() + self._idle
        while not select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                self._end(stop=True)
                raise EngineError(f"ctr content get {self._digest[:19]} sent nothing for {self._idle:g} s on "
                                  f"{printable(self._address)}, so deltaimg stopped it; is containerd stuck? "
                                  f"(a slow host: set {TIMEOUT_VARIABLE})")
        size = process.stdout.readinto(buffer)  # type: ignore[attr-defined]
        if not size:
            self._ctr.arm(self._idle)  # it closed its output: it should exit now
            self._end(stop=False)
            if process.returncode != 0:
                reason = one_line(bytes(self._ctr.errors))
                raise EngineError(f"ctr content get {self._digest[:19]} failed on {printable(self._address)}: {reason}")
        return size or 0

    def _end(self, stop: bool) -> None:
        if not self._ended:
            self._ended = True
            self._ctr.end(stop)

    def close(self) -> None:
        self._end(stop=True)
        super().close()


def one_line(text: bytes) -> str:
    return printable(" ".join(text.decode("utf-8", "replace").split())) or "no reason given"
