"""The zstd binding deltaimg uses.

Python 3.14's ``compression.zstd`` (``backports.zstd`` before 3.14) is the one Python binding
that exposes zstd's reference prefix (``ZstdDict(..., is_raw=True).as_prefix``), which is what
``zstd --patch-from`` does; python-zstandard only offers dictionaries, which lose long-distance
matching on large references.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - depends on the interpreter
    from backports import zstd

__all__ = ["zstd"]
