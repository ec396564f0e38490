"""Where an unattended apply's output goes (the :class:`deltaimg.apply.unattended.Reporter`s).

On a terminal: readable lines. For cron and log collectors (``--log-format json``): one JSON
object per line, each with ``time``, ``event`` and ``message``, and for an outcome the bundle,
from/to images and containers. For scripts (``--json``): everything collected and printed as one
JSON object at the end. The events are listed in docs/edge-operation.md.
"""

from __future__ import annotations

import json
import sys

from deltaimg.errors import printable
from deltaimg.apply.journal import now


class TextLog:
    def progress(self, message: str) -> None:
        print(printable(message), flush=True)

    def outcome(self, event: str, record: dict, text: str) -> None:
        print(printable(text), flush=True)


class JsonLines:
    def progress(self, message: str) -> None:
        self._line({"event": "progress", "message": message})

    def outcome(self, event: str, record: dict, text: str) -> None:
        self._line({"event": event, "message": text, **record})

    def error(self, message: str, exit_code: int) -> None:
        self._line({"event": "error", "message": message, "exit_code": exit_code})

    def _line(self, record: dict) -> None:
        print(json.dumps({"time": now(), **record}, sort_keys=True), flush=True)


class Collected:
    """Keeps every line and outcome for one JSON report printed by :meth:`report`."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.outcomes: list[dict] = []

    def progress(self, message: str) -> None:
        self.log.append(message)

    def outcome(self, event: str, record: dict, text: str) -> None:
        self.outcomes.append({"event": event, "message": text, **record})

    def report(self) -> dict:
        return {"outcomes": self.outcomes, "log": self.log}


def write_error(message: str, exit_code: int, json_lines: bool) -> None:
    """The last line of a failed run: on stderr always (cron mails it), and as a JSON line on stdout
    when the run logs JSON lines, so a log collector sees the outcome too."""
    if json_lines:
        JsonLines().error(message, exit_code)
    print(f"deltaimg: error: {printable(message)}", file=sys.stderr)
