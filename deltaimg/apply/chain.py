"""Which of the bundles given apply to this host, and in which order.

Bundles are edges between images (base image ID -> target image ID). The images this host has
are where it stands. From each image the host has that containers run (or that is the furthest
along its chain the host has), the newest image the bundles lead to (by the signed ``created``
time; the further one when times tie) is its goal, reached by the fewest bundles. The bundles
on those paths are applied in chain order, each after the one that makes its base; so a stick
with 1.0->1.1, 1.1->1.2 and 1.2->1.3 takes a host from 1.0, 1.1 or 1.2 to 1.3, whatever the
files' names, and a host at 1.3 (or one that never had the app) is left alone.

Every other bundle is reported with why it is left out:

- ``already-applied``: the host has its target, or an image that comes after it;
- ``superseded``: its base is here, but another bundle takes the host further;
- ``downgrade``: its target is older than its base; such bundles are applied only when named
  alone with ``--allow-downgrade``, never picked from a folder;
- ``duplicate``: another bundle given makes the same update;
- ``not-for-this-host``: nothing of its chain is here.

A ``not-for-this-host`` bundle that updates a newer version of an image this host runs (same
repository, created later than where the host ends up) marks a *gap*: the bundle that would
link them is missing, and the run ends with :class:`deltaimg.errors.PartialChainError`.
"""

from __future__ import annotations

import datetime
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from deltaimg.bundle.manifest import ImageRecord
from deltaimg.bundle.reader import Bundle
from deltaimg.errors import DowngradeError, UsageError

APPLY = "apply"
LEFT_OUT = ("already-applied", "superseded", "downgrade", "duplicate", "not-for-this-host")
OLDEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


class Host(Protocol):
    """What the selection needs to know about the engine."""

    def has_image(self, image_id: str) -> bool: ...

    def containers_on(self, image_id: str) -> list[str]: ...

    def images_in_use(self) -> dict[str, tuple[str | None, list[str]]]:
        """Image ID -> (created, tags) of every image a container uses."""
        ...


@dataclass
class Step:
    bundle: Bundle
    action: str  # APPLY or one of LEFT_OUT
    reason: str = ""  # for a bundle left out: why, as a phrase


@dataclass
class Selection:
    steps: list[Step]  # the bundles left out (in the order given), then those to apply, in order
    gaps: list[str] = field(default_factory=list)  # one sentence per missing link

    @property
    def to_apply(self) -> list[Bundle]:
        return [step.bundle for step in self.steps if step.action == APPLY]


def parse_time(value: object) -> datetime.datetime | None:
    """An image's ``created`` (RFC 3339, nanoseconds allowed), or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Python reads at most microseconds
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def is_downgrade(bundle: Bundle) -> bool:
    """A target of the bundle was created before its base (unknown times count as no downgrade)."""
    return bool(_downgrades(bundle))


def _downgrades(bundle: Bundle) -> list[tuple[ImageRecord, ImageRecord]]:
    found = []
    for pair in bundle.manifest.images:
        base, target = parse_time(pair.base.created), parse_time(pair.target.created)
        if base is not None and target is not None and target < base:
            found.append((pair.base, pair.target))
    return found


def refuse_downgrade(bundle: Bundle) -> None:
    """Raise :class:`DowngradeError` for a bundle that goes back in time (``--allow-downgrade`` skips this)."""
    for base, target in _downgrades(bundle)[:1]:
        raise DowngradeError(f"{bundle.path} goes back from {base.name} (created {base.created}) to the older "
                             f"{target.name} (created {target.created}); pass --allow-downgrade to apply it anyway")


def repositories(tags: object) -> set[str]:
    """``app`` for ``app:1.0`` and ``registry:5000/app:1.0``; digests are left out."""
    names = set()
    for tag in tags if isinstance(tags, (list, tuple)) else []:
        if isinstance(tag, str) and "@" not in tag:
            head, sep, last = tag.rpartition(":")
            names.add(head if sep and "/" not in last else tag)
    return names


def select(bundles: list[Bundle], host: Host) -> Selection:
    """Pick and order the bundles that take this host forward (see the module's doc)."""
    left_out: list[Step] = []
    edges: list[Bundle] = []
    by_edge: dict[tuple[str, str], Bundle] = {}
    for bundle in bundles:
        key = (_base(bundle), _target(bundle))
        if key in by_edge:
            left_out.append(Step(bundle, "duplicate", f"it makes the same update as {by_edge[key].path}"))
            continue
        by_edge[key] = bundle
        if is_downgrade(bundle):
            relevant = host.has_image(_base(bundle))
            left_out.append(Step(bundle, "downgrade" if relevant else "not-for-this-host",
                                 f"it goes back to the older {bundle.manifest.target.name}; to apply it, name it "
                                 "alone with --allow-downgrade" if relevant else _absent(bundle)))
            continue
        edges.append(bundle)
    graph = _Graph(edges)
    present = {node for node in graph.nodes if host.has_image(node)}
    chosen: dict[str, Bundle] = {}
    ends: dict[str, str] = {}  # start -> goal
    for start in sorted(present):
        paths = graph.paths_from(start)
        if not paths:
            continue
        later_here = any(node in present for node in paths)
        if later_here and not host.containers_on(start):
            continue  # an older image lying around: its chain is followed from the newer one
        goal = max([start, *paths], key=lambda node: (graph.created(node) or OLDEST, len(paths.get(node, []))))
        ends[start] = goal
        for bundle in paths.get(goal, []):
            chosen[bundle.path] = bundle
    steps = left_out + [_left_out(bundle, graph, present, chosen) for bundle in edges if bundle.path not in chosen]
    steps += [Step(bundle, APPLY) for bundle in _chain_order(list(chosen.values()))]
    return Selection(steps, _gaps(steps, graph, host, ends))


def hold_back(bundles: list[Bundle], last: dict[str, dict]) -> tuple[list[Bundle], list[tuple[Bundle, str]]]:
    """Split ``bundles`` (in chain order) into those that go ahead and those held back, with why: a
    bundle whose last attempt (``last``: closing journal record by bundle sha256) was rolled back, and
    every bundle after it in its chain. The others go ahead, so one failing update does not stall
    every other one on the host; ``--retry`` skips this."""
    kept: list[Bundle] = []
    held: list[tuple[Bundle, str]] = []
    blocked: set[str] = set()  # images a held bundle would have made
    for bundle in bundles:
        closed = last.get(bundle.sha256 or "")
        if closed and closed.get("outcome") == "rolled-back":
            message = (f"{bundle.path} was rolled back at {closed.get('time')} ({closed.get('message')}); not "
                       "trying it again: pass --retry once the cause is fixed")
        elif any(pair.base.image_id in blocked for pair in bundle.manifest.images):
            message = f"{bundle.path} waits for the update before it in its chain, which was rolled back"
        else:
            kept.append(bundle)
            continue
        blocked.update(pair.target.image_id for pair in bundle.manifest.images)
        held.append((bundle, message))
    return kept, held


def _base(bundle: Bundle) -> str:
    return bundle.manifest.base.image_id


def _target(bundle: Bundle) -> str:
    return bundle.manifest.target.image_id


def _absent(bundle: Bundle) -> str:
    return f"this host does not have its base {bundle.manifest.base.name}, and no other bundle makes it"


class _Graph:
    def __init__(self, edges: list[Bundle]) -> None:
        self.out: dict[str, list[Bundle]] = {}
        self.images: dict[str, ImageRecord] = {}
        for bundle in sorted(edges, key=lambda b: b.path):
            self.out.setdefault(_base(bundle), []).append(bundle)
            self.images.setdefault(_base(bundle), bundle.manifest.base)
            self.images[_target(bundle)] = bundle.manifest.target

    @property
    def nodes(self) -> set[str]:
        return set(self.images)

    def created(self, node: str) -> datetime.datetime | None:
        return parse_time(self.images[node].created)

    def paths_from(self, start: str) -> dict[str, list[Bundle]]:
        """Every image reachable from ``start`` (not itself), with the shortest bundle path to it."""
        paths: dict[str, list[Bundle]] = {start: []}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for bundle in self.out.get(node, []):
                if _target(bundle) not in paths:
                    paths[_target(bundle)] = paths[node] + [bundle]
                    queue.append(_target(bundle))
        del paths[start]
        return paths

    def reaches(self, start: str, wanted: set[str]) -> bool:
        return any(node in wanted for node in [start, *self.paths_from(start)])


def _left_out(bundle: Bundle, graph: _Graph, present: set[str], chosen: dict[str, Bundle]) -> Step:
    target = bundle.manifest.target.name
    if _target(bundle) in present:
        return Step(bundle, "already-applied", f"{target} is already in the engine")
    if graph.reaches(_target(bundle), present):
        return Step(bundle, "already-applied", f"this host is past {target}")
    if any(graph.reaches(node, {_base(bundle)}) for node in present):
        others = ", ".join(b.path for b in chosen.values()) or "no bundle"
        return Step(bundle, "superseded", f"{others} takes this host to a newer image")
    return Step(bundle, "not-for-this-host", _absent(bundle))


def _chain_order(bundles: list[Bundle]) -> list[Bundle]:
    """Each bundle after the one that makes its base (ties by file name); a cycle is refused."""
    remaining = sorted(bundles, key=lambda b: b.path)
    made = {_target(b) for b in remaining}
    ordered: list[Bundle] = []
    while remaining:
        ready = [b for b in remaining if _base(b) not in made]
        if not ready:
            names = ", ".join(b.path for b in remaining)
            raise UsageError(f"the bundles {names} update each other's images in a cycle; remove the ones not wanted")
        ordered.append(ready[0])
        remaining.remove(ready[0])
        made = {_target(b) for b in remaining}
    return ordered


def _gaps(steps: list[Step], graph: _Graph, host: Host, ends: dict[str, str]) -> list[str]:
    """Missing links: a bundle left out as not for this host that continues an image this host runs."""
    current: dict[str, ImageRecord] = {}  # where the host ends up
    for image, (created, tags) in host.images_in_use().items():
        goal = ends.get(image, image)
        current[goal] = graph.images.get(goal) or ImageRecord(image, tuple(tags), created)
    for goal in ends.values():
        current.setdefault(goal, graph.images[goal])
    gaps = []
    for step in steps:
        if step.action != "not-for-this-host":
            continue
        base = step.bundle.manifest.base
        base_created = parse_time(base.created)
        for have in current.values():
            created = parse_time(have.created)
            if base_created and created and base_created > created and \
                    repositories(base.tags) & repositories(have.tags):
                gaps.append(f"this host runs {have.name} but {step.bundle.path} updates the newer "
                            f"{base.name}; the bundle(s) in between are missing")
                step.reason = f"{step.reason}; a missing link: the host is at {have.name}"
                break
    return gaps
