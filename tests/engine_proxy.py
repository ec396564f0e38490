"""A proxy in front of the real Docker engine that records the request line of every call made
through it: a test that must show a command changed nothing on the engine asserts that it only
read. (Comparing the engine's containers before and after cannot: other work shares the engine.)"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
from typing import Iterator

ENGINE = "/var/run/docker.sock"
REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|PATCH) (\S+) HTTP/1\.[01]\r$", re.MULTILINE)


class RecordingProxy:
    """Listens on ``path``; each connection is relayed to the engine, client bytes scanned for request lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = "unix://" + path
        self.requests: list[str] = []  # "GET /v1.41/containers/json", in the order they came
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE)
            threading.Thread(target=self._relay, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(engine, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                if record:
                    pending += data
                    complete, _, pending = pending.rpartition(b"\n")
                    with self._lock:
                        self.requests += [f"{m[0].decode()} {m[1].decode()}" for m in REQUEST_LINE.findall(complete + b"\n")]
                    pending = pending[-8192:]  # a request line is short; a body's tail need not be kept
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def writes(self) -> list[str]:
        """The calls that could change something: all but GET and HEAD."""
        with self._lock:
            return [r for r in self.requests if not r.startswith(("GET ", "HEAD "))]

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@contextlib.contextmanager
def recording_engine() -> Iterator[RecordingProxy]:
    """A :class:`RecordingProxy` on a socket of its own (in a short directory: a socket's path is
    limited to 107 bytes); run the command with ``env={"DOCKER_HOST": proxy.url}``."""
    with tempfile.TemporaryDirectory(prefix="deltaimg-engine-") as directory:
        proxy = RecordingProxy(os.path.join(directory, "engine.sock"))
        try:
            yield proxy
        finally:
            proxy.close()
