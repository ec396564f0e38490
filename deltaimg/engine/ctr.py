"""Running containerd's ``ctr`` command: the only way deltaimg talks to containerd.

``ctr`` rather than containerd's gRPC API: it ships with every containerd (``k3s ctr`` on k3s),
needs no Python dependency, and its import reads the archives deltaimg writes. Every call names
the socket (``--address``) and the namespace (``k8s.io``, Kubernetes' CRI's, by default).
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from typing import BinaryIO

from deltaimg.errors import EngineError, printable

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
K3S_ADDRESS = "/run/k3s/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"
MAX_ANSWER = 16 << 20  # a manifest, a config, what an import prints
MAX_LISTING = 64 << 20  # `ctr images ls` of a host with tens of thousands of images
CALL_TIMEOUT = 3600  # an import of a large image on a slow disk
CHUNK = 1 << 20


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
        process = self._start(args, stdin is not None)
        assert process.stdout is not None and process.stderr is not None
        if stdin is not None:
            assert process.stdin is not None
            try:
                while block := stdin.read(CHUNK):
                    process.stdin.write(block)
            except BrokenPipeError:
                pass  # ctr stopped reading: its exit status and stderr say why
            finally:
                try:
                    process.stdin.close()
                except BrokenPipeError:
                    pass
                process.stdin = None  # closed: communicate() below must not flush it
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
            reason = one_line(errors)
            raise EngineError(f"ctr {what} failed on {printable(self.address)}: {reason}", reason)
        return output

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of one blob of the content store (``ctr content get``), read as it comes."""
        process = self._start(("content", "get", digest), False)
        return io.BufferedReader(_BlobStream(process, digest, self.address), buffer_size=CHUNK)  # type: ignore[return-value]

    def _start(self, args: tuple[str, ...], with_stdin: bool) -> subprocess.Popen:
        try:
            return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL)
        except OSError as exc:
            raise EngineError(f"cannot run {self.command[0]} ({exc.strerror}); install containerd's ctr "
                              "or name the ctr command of your distribution (k3s ctr)") from None


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
            reason = one_line(self._process.stderr.read(4096))
            raise EngineError(f"ctr content get {self._digest[:19]} failed on {printable(self._address)}: {reason}")
        return size

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()
        super().close()


def one_line(text: bytes) -> str:
    return printable(" ".join(text.decode("utf-8", "replace").split())) or "no reason given"
