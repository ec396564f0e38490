"""Which bundles from a stick an edge host applies, and in which order (deltaimg.apply.chain), without an engine."""

from __future__ import annotations

import pytest

from deltaimg.apply import chain
from deltaimg.bundle.manifest import ImagePair, ImageRecord, Manifest
from deltaimg.bundle.reader import Bundle
from deltaimg.errors import UsageError


def image(version: str, repo: str = "app") -> dict:
    """``repo:version``, created on day ``version`` (so 1 < 2 < 3 ...)."""
    day = int(version.split(".")[0])
    return {"image_id": f"sha256:{repo}-{version}", "tags": [f"{repo}:{version}"], "created": f"2024-01-{day:02d}T00:00:00Z"}


def record(version: str, repo: str = "app") -> ImageRecord:
    fields = image(version, repo)
    return ImageRecord(fields["image_id"], tuple(fields["tags"]), fields["created"])


def bundle(path: str, base: str, target: str, repo: str = "app") -> Bundle:
    manifest = Manifest(tool=None, created=None, images=(ImagePair(record(base, repo), record(target, repo), (), None),),
                        payloads=(), split=None, document={})
    return Bundle(path=path, manifest=manifest, signer=None, payload_start=0, size=0)


class Host:
    def __init__(self, images: list[str], running: list[str] = (), repo: str = "app") -> None:
        self.images = {image(v, repo)["image_id"]: image(v, repo) for v in images}
        self.running = {image(v, repo)["image_id"] for v in running}

    def has_image(self, image_id: str) -> bool:
        return image_id in self.images

    def containers_on(self, image_id: str) -> list[str]:
        return ["app"] if image_id in self.running else []

    def images_in_use(self) -> dict[str, tuple[str | None, list[str]]]:
        return {i: (self.images[i]["created"], self.images[i]["tags"]) for i in self.running}


STICK = [bundle("x.dimg", "2", "3"), bundle("m.dimg", "3", "4"), bundle("a.dimg", "1", "2")]


def applied(selection: chain.Selection) -> list[str]:
    return [b.path for b in selection.to_apply]


def left_out(selection: chain.Selection) -> dict[str, str]:
    return {step.bundle.path: step.action for step in selection.steps if step.action != chain.APPLY}


def test_a_chain_is_applied_in_order_whatever_the_order_the_files_come_in():
    for order in (STICK, STICK[::-1], STICK[1:] + STICK[:1]):
        selection = chain.select(list(order), Host(["1"], running=["1"]))
        assert applied(selection) == ["a.dimg", "x.dimg", "m.dimg"]
        assert (left_out(selection), selection.gaps) == ({}, [])


def test_a_host_part_way_along_applies_the_rest_and_leaves_out_what_it_is_past():
    selection = chain.select(STICK, Host(["1", "2"], running=["2"]))
    assert applied(selection) == ["x.dimg", "m.dimg"]
    assert left_out(selection) == {"a.dimg": "already-applied"}


def test_an_older_image_lying_around_is_not_a_reason_to_apply_anything_for_it():
    selection = chain.select(STICK, Host(["1", "3"], running=["3"]))
    assert applied(selection) == ["m.dimg"]
    assert left_out(selection) == {"a.dimg": "already-applied", "x.dimg": "already-applied"}


def test_a_host_at_the_end_of_the_chain_applies_nothing():
    selection = chain.select(STICK, Host(["1", "2", "3", "4"], running=["4"]))
    assert applied(selection) == [] and set(left_out(selection).values()) == {"already-applied"}
    assert selection.gaps == []


def test_an_image_without_containers_is_still_brought_to_the_newest_version():
    assert applied(chain.select(STICK, Host(["2"]))) == ["x.dimg", "m.dimg"]


def test_the_same_update_twice_is_applied_once():
    selection = chain.select([*STICK, bundle("copy-of-a.dimg", "1", "2")], Host(["1"], running=["1"]))
    assert applied(selection) == ["a.dimg", "x.dimg", "m.dimg"]
    assert left_out(selection) == {"copy-of-a.dimg": "duplicate"}


def test_a_direct_bundle_supersedes_the_steps_it_skips():
    direct = bundle("direct.dimg", "1", "4")
    selection = chain.select([*STICK, direct], Host(["1"], running=["1"]))
    assert applied(selection) == ["direct.dimg"]
    assert left_out(selection) == {"a.dimg": "superseded", "x.dimg": "superseded", "m.dimg": "superseded"}


def test_a_downgrade_is_never_picked_from_several_bundles():
    selection = chain.select([bundle("back.dimg", "3", "2"), *STICK], Host(["1", "3"], running=["3"]))
    assert applied(selection) == ["m.dimg"]
    assert left_out(selection)["back.dimg"] == "downgrade"
    assert chain.is_downgrade(bundle("back.dimg", "3", "2")) and not chain.is_downgrade(STICK[0])


def test_bundles_for_another_image_are_left_out_without_a_gap():
    other = bundle("other.dimg", "1", "2", repo="db")
    selection = chain.select([other, *STICK], Host(["1"], running=["1"]))
    assert applied(selection) == ["a.dimg", "x.dimg", "m.dimg"]
    assert left_out(selection) == {"other.dimg": "not-for-this-host"}
    assert selection.gaps == []


def test_a_missing_link_is_a_gap():
    selection = chain.select([STICK[1]], Host(["1"], running=["1"]))  # 3 -> 4, on a host at 1
    assert applied(selection) == [] and left_out(selection) == {"m.dimg": "not-for-this-host"}
    [gap] = selection.gaps
    assert "runs app:1" in gap and "m.dimg updates the newer app:3" in gap


def test_a_missing_link_after_what_can_be_applied_is_a_gap_too():
    selection = chain.select([STICK[0], STICK[2], bundle("far.dimg", "5", "6")], Host(["1"], running=["1"]))
    assert applied(selection) == ["a.dimg", "x.dimg"]
    [gap] = selection.gaps
    assert "runs app:3" in gap and "far.dimg" in gap


def test_bundles_that_update_each_other_in_a_cycle_are_refused():
    there, back = bundle("there.dimg", "1", "1.1"), bundle("back.dimg", "1.1", "1")  # made the same day
    with pytest.raises(UsageError, match="cycle"):
        chain.select([there, back], Host(["1", "1.1"], running=["1", "1.1"]))


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T10:20:30.123456789Z", "2024-05-01 10:20:30.123456+00:00"),
    ("2024-05-01T10:20:30Z", "2024-05-01 10:20:30+00:00"),
    ("2024-05-01T12:20:30.5+02:00", "2024-05-01 12:20:30.500000+02:00"),
    ("", None), ("yesterday", None), (None, None),
])
def test_created_times_are_read_to_the_microsecond(text, expected):
    parsed = chain.parse_time(text)
    assert (str(parsed) if parsed else None) == expected
