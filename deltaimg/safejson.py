"""Untrusted JSON (image configs, manifest.json, OCI layouts, the bundle manifest, the journal),
parsed with its size in values capped before the parser sees it."""

from __future__ import annotations

import json

from deltaimg.errors import DeltaimgError, ImageReadError

MAX_JSON_VALUES = 1 << 20


def load_json(data: bytes, what: str, normal: str, error: type[DeltaimgError] = ImageReadError) -> object:
    """Untrusted JSON, parsed; ``error`` names ``what`` when it holds more values than ``normal``
    (what such a document holds at most) or does not parse."""
    if too_many_json_values(data):
        raise error(f"{what} holds more values than {normal}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: brackets nested thousands deep
        raise error(f"{what} is not valid JSON ({exc})") from None


def too_many_json_values(data: bytes, limit: int = MAX_JSON_VALUES) -> bool:
    """Whether JSON text may hold more than ``limit`` values. Parsed, a value costs Python up to
    about 80 bytes, so a few MiB of ``[{},{},...]`` would take gigabytes; every value but a
    container's first follows a comma, and every container opens with a bracket."""
    return data.count(b",") + data.count(b"[") + data.count(b"{") > limit
