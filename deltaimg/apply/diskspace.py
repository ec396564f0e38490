"""Refuse an update that would fill a disk, before anything is started.

What an update writes, for a bundle that rebuilds *R* bytes of layers (the sizes its signed
manifest gives for the layers the engine lacks):

- the scratch directory (``<state dir>/work``): the base bytes the rebuild reads (the byte
  ranges its deltas name, kept from the engine's export in sparse files, and any base layer the
  archive carries whole), plus the rebuilt archive. The manifest does not say how much that is;
  it is counted as *R* again (a changed layer is rebuilt from its own older version, of about
  its size), which it rarely reaches. Peak: 2R. The base bytes are deleted before loading.
- the engine's data root (``docker info`` DockerRootDir): ``docker load`` unpacks the archive
  into its tmp directory and then registers the layers. Peak: 2R, of which R stays.

On one filesystem the load overlaps the archive: 3R. Bundles applied one after the other keep
what earlier ones loaded, so a chain needs, at its k-th bundle, the R of every earlier one too.

``DELTAIMG_TEST_FREE_BYTES`` (tests only) replaces every free-space reading with its value.
"""

from __future__ import annotations

import os
from typing import Callable

from deltaimg.errors import DiskSpaceError
from deltaimg.units import human_size

FREE_ENV = "DELTAIMG_TEST_FREE_BYTES"


def check(work_dir: str, data_root: str | None, rebuilds: list[int], log: Callable[[str], None]) -> None:
    """Raise :class:`DiskSpaceError` unless both places can take ``rebuilds`` (bytes, in apply order)."""
    if not any(rebuilds):
        return
    need_work = need_data = need_shared = 0
    kept = 0
    for size in rebuilds:
        need_work = max(need_work, 2 * size)
        need_data = max(need_data, kept + 2 * size)
        need_shared = max(need_shared, kept + 3 * size)
        kept += size
    data_dev = _device(data_root) if data_root else None
    if data_root and data_dev is None:
        log(f"cannot check the free space of the engine's data root {data_root}: it is not visible from here")
    if data_dev is not None and data_dev == _device(_existing(work_dir)):
        _require(work_dir, need_shared, f"{work_dir} (the rebuild's scratch space) and {data_root} "
                 "(the engine's data root, on the same filesystem)")
        return
    _require(work_dir, need_work, f"{work_dir} (the rebuild's scratch space)")
    if data_root and data_dev is not None:
        _require(data_root, need_data, f"{data_root} (the engine's data root)")


def free_bytes(path: str) -> int:
    override = os.environ.get(FREE_ENV)
    if override is not None:
        return int(override)
    stats = os.statvfs(_existing(path))
    return stats.f_bavail * stats.f_frsize


def _existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists: a dry run checks a state directory it does not create."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _require(path: str, need: int, where: str) -> None:
    free = free_bytes(path)
    if free < need:
        raise DiskSpaceError(f"not enough disk space: the update needs {human_size(need)} free in {where}, which has "
                             f"{human_size(free)}; free some (docker image prune) and run again")


def _device(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None
