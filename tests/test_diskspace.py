"""What an update needs free, on real disks of known size (tmpfs mounts): the scratch space takes 2R
for a bundle that rebuilds R bytes, the engine's data root 2R plus what earlier bundles loaded, both
on one filesystem 3R plus that."""

from __future__ import annotations

import pytest

from deltaimg.apply import diskspace
from deltaimg.errors import DiskSpaceError
from deltaimg.units import human_size
from tests.conftest import Tmpfs

MiB = 1 << 20


@pytest.fixture
def disks(tmp_path):
    mounted: list[Tmpfs] = []

    def disk(name: str, size: int) -> str:
        mounted.append(Tmpfs(str(tmp_path / name), size))
        return mounted[-1].path

    yield disk
    for each in mounted:
        each.unmount()


def refusal(work: str, data: str | None, rebuilds: list[int]) -> str:
    with pytest.raises(DiskSpaceError) as caught:
        diskspace.check(work, data, rebuilds, lambda line: None)
    return str(caught.value)


def message(need: int, where: str, free: int) -> str:
    return (f"not enough disk space: the update needs {human_size(need)} free in {where}, which has "
            f"{human_size(free)}; free some (docker image prune) and run again")


def test_a_chain_on_separate_disks_needs_2r_of_scratch_and_2r_plus_what_was_loaded_in_the_data_root(disks):
    work, data = disks("work", 6 * MiB), disks("data", 7 * MiB)
    diskspace.check(work, data, [3 * MiB, 2 * MiB], lambda line: None)  # scratch max(6, 4) = 6, data max(6, 3 + 4) = 7
    assert refusal(work, data, [3 * MiB, 3 * MiB]) == message(9 * MiB, f"{data} (the engine's data root)", 7 * MiB)
    assert refusal(work, data, [4 * MiB]) == message(8 * MiB, f"{work} (the rebuild's scratch space)", 6 * MiB)


def test_scratch_and_data_root_on_one_disk_need_3r_plus_what_was_loaded(disks):
    shared = disks("shared", 8 * MiB)
    work = f"{shared}/state/work"  # not made yet (a dry run): its nearest existing folder is measured
    diskspace.check(work, shared, [2 * MiB, 2 * MiB], lambda line: None)  # max(3 * 2, 2 + 3 * 2) = 8
    where = f"{work} (the rebuild's scratch space) and {shared} (the engine's data root, on the same filesystem)"
    assert refusal(work, shared, [3 * MiB]) == message(9 * MiB, where, 8 * MiB)


def test_a_data_root_not_visible_from_here_is_said_and_only_the_scratch_space_checked(disks, tmp_path):
    work = disks("work", 2 * MiB)
    said: list[str] = []
    diskspace.check(work, str(tmp_path / "elsewhere"), [1 * MiB], said.append)
    assert said == [f"cannot check the free space of the engine's data root {tmp_path / 'elsewhere'}: it is not "
                    "visible from here"]


def test_nothing_to_rebuild_needs_no_space(disks):
    diskspace.check(disks("full", 4096), None, [0, 0], lambda line: None)
