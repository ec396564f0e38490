"""``deltaimg apply`` into the engine, as an edge host runs it: from cron, a systemd timer, or
when a USB stick is mounted, with nobody watching. Every start does the right thing:

1. The paths name bundle files, split bundles' first parts, or folders of them.
2. The state directory's lock is taken (one run at a time; ``--wait`` to queue).
3. The scratch directory is emptied and every interrupted attempt is recovered
   (:mod:`deltaimg.apply.recovery`), whatever bundles were given.
4. Every bundle's signature is checked; those that take this host forward are picked and put in
   chain order (:mod:`deltaimg.apply.chain`); the others are reported and left alone.
5. Those are verified in full, and the run is refused before anything changes when one of them
   was rolled back before (unless ``--retry``), would move a tag back to an older image (unless
   ``--allow-downgrade``), or the disks are too full (:mod:`deltaimg.apply.diskspace`).
6. They are applied one after the other (:mod:`deltaimg.apply.engine`), each journalled
   (:mod:`deltaimg.apply.journal`) before it changes anything. The first failure stops the run.
7. A bundle that would have continued an image this host runs, but cannot be reached (a missing
   link), ends the run with :class:`PartialChainError`, after everything else is applied.

One bundle file named alone is taken at its word: a bundle for an image this host lacks is an
error (:class:`BaseMissingError`), and so is one whose target is older than its base, unless
``--allow-downgrade``. From a folder or a list, such bundles are reported and skipped.

SIGTERM (systemd stopping the service) interrupts like Ctrl-C: a swap in progress rolls back,
and the attempt is left for the next run's recovery to confirm.
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass
from typing import Protocol

from deltaimg import faults, interrupts, progress

from deltaimg.apply import chain

from deltaimg.apply import diskspace

from deltaimg.engine import choose
from deltaimg.engine.interface import Engine

from deltaimg.apply import receipts, recovery

from deltaimg.bundle import signing
from deltaimg.apply.rebuild import Rebuild, read_rebuilds
from deltaimg.bundle.reader import Bundle, bundle_files, open_bundle
from deltaimg.bundle.verify import verify_payloads
from deltaimg.apply.engine import apply_to_engine, load_size, require_base
from deltaimg.errors import (
    DeltaimgError,
    DowngradeError,
    SwapFailedNotRolledBack,
    SwapFailedRolledBack,
    PartialChainError,
    UsageError,
    printable,
)
from deltaimg.apply.journal import Journal, StateDir, bundle_record, new_id
from deltaimg.apply.lock import RunLock
from deltaimg.apply.plan import SwapResult, survey


@dataclass
class Options:
    paths: list[str]
    trusted: list[signing.TrustedKey]
    state_dir: str
    wait: float = 0.0
    containers: list[str] | None = None  # swap only these (None: every container on a base)
    swap: bool = True
    grace: float = 10.0
    dry_run: bool = False
    allow_downgrade: bool = False
    retry: bool = False
    progress_bars: bool = True
    engine: str | None = None  # which engine, and where (deltaimg.engine.choose); None: $DELTAIMG_ENGINE or Docker
    receipts: bool = False  # write the run's receipt beside the bundles (deltaimg.apply.receipts)


class Reporter(Protocol):
    """Where a run's output goes: progress lines, and one record per outcome (see docs/edge-operation.md)."""

    def progress(self, message: str) -> None: ...

    def outcome(self, event: str, record: dict, text: str) -> None: ...


def run(options: Options, reporter: Reporter) -> None:
    files = bundle_files(options.paths)
    strict = len(options.paths) == 1 and not os.path.isdir(options.paths[0])
    state = StateDir(options.state_dir)
    if options.dry_run:  # changes nothing, so it takes no lock and writes no state
        _Run(options, reporter, state, choose.connect(options.engine), strict).dry_run(files)
        return
    state.create()
    folder = options.paths[0] if os.path.isdir(options.paths[0]) else os.path.dirname(options.paths[0]) or "."
    with receipts.kept(folder if options.receipts else None, state.journal, reporter) as reporter, \
            RunLock(state.lock_path, options.wait), _Termination() as termination:
        state.clean_work()
        engine = choose.connect(options.engine)
        recovery.recover(engine, state.journal, reporter.outcome)
        _Run(options, reporter, state, engine, strict, termination).apply(files)


class _Termination:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does; ``received`` tells an interrupt from a failure."""

    def __init__(self) -> None:
        self.received = False

    def __enter__(self) -> _Termination:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True
        interrupts.interrupt(signum, frame)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class _Run:
    def __init__(self, options: Options, reporter: Reporter, state: StateDir, engine: Engine,
                 strict: bool, termination: _Termination | None = None) -> None:
        self.options = options
        self.reporter = reporter
        self.state = state
        self.journal: Journal = state.journal
        self.engine = engine
        self.strict = strict
        self.termination = termination
        self.skipped: dict[str, list[dict]] = {}  # bundle path -> containers left out of its swap, with why

    # -- the two ways through

    def apply(self, files: list[str]) -> None:
        selection, bundles, rebuilds, held = self._prepare(files)
        applied: list[Bundle] = []
        for bundle in bundles:
            try:
                self._apply_one(bundle, rebuilds[bundle.path])
            except DeltaimgError as exc:
                if not applied:
                    raise
                before = ", ".join(f"{b.path} ({b.manifest.target.name})" for b in applied)
                raise type(exc)(f"{exc} (applied before it: {before})") from None
            applied.append(bundle)
        self._finish(selection, held)

    def dry_run(self, files: list[str]) -> None:
        pending = [a for a in self.journal.attempts() if a.interrupted]
        if pending:
            self.reporter.progress(f"{len(pending)} interrupted update(s) in {self.journal.path}: the next apply "
                                   "recovers them first (unless a run is in progress now)")
        selection, bundles, rebuilds, held = self._prepare(files)
        for bundle in bundles:
            rebuild = rebuilds[bundle.path][0]
            if self.engine.find_image(rebuild.base_id) or self.engine.find_image(rebuild.target_id):
                apply_to_engine(bundle, self.engine, containers=self._names(*_bases(rebuilds[bundle.path])),
                                swap_containers=self.options.swap, grace=self.options.grace, dry_run=True,
                                log=self.reporter.progress)
            else:
                self.reporter.progress(f"would rebuild and load {bundle.manifest.target.name} once the bundle "
                                       f"before it has made {bundle.manifest.base.name}, then swap the "
                                       "containers on that")
            self._outcome("planned", bundle, "nothing changed (dry run)")
        self._finish(selection, held)

    def _prepare(self, files: list[str]) -> tuple[chain.Selection, list[Bundle], dict[str, list[Rebuild]], list[str]]:
        """The bundles to apply, in order, verified and checked for disk space; what each rebuilds; and
        why bundles were held back."""
        selection = self._select(files)
        rebuilds = self._verify(selection.to_apply)  # also the sha256 of every bundle's bytes, which the journal knows them by
        bundles, held = (selection.to_apply, []) if self.options.retry else self._hold_back(selection.to_apply)
        self._preflight(bundles, rebuilds)
        return selection, bundles, rebuilds, held

    def _finish(self, selection: chain.Selection, held: list[str]) -> None:
        """End a run that did what it could: bundles held back, then missing links, fail it."""
        if held:
            raise SwapFailedRolledBack("; ".join(held) + ("; partial chain: " + "; ".join(selection.gaps)
                                                          if selection.gaps else ""))
        if selection.gaps:
            raise PartialChainError("partial chain: " + "; ".join(selection.gaps))

    # -- choosing

    def _select(self, files: list[str]) -> chain.Selection:
        self._check_container_names()
        bundles = [open_bundle(path, self.options.trusted, check_payloads=False) for path in files]
        if not bundles:
            self.reporter.progress(f"no bundle (*.dimg, *.dimg.001) in {' '.join(self.options.paths)}; nothing to do")
            return chain.Selection([])
        several = [bundle for bundle in bundles if len(bundle.manifest.images) > 1]
        if several and not self.strict:
            raise UsageError(f"{several[0].path} updates {len(several[0].manifest.images)} images as one update, which "
                             "is applied only when named alone: deltaimg apply BUNDLE (not a folder or a list)")
        host = _EngineHost(self.engine, self.options)
        selection = chain.Selection([self._strict_step(bundles[0], host)]) if self.strict else chain.select(bundles, host)
        for step in selection.steps:
            if step.action == "already-applied":
                self._outcome("already-applied", step.bundle, f"already applied: {step.reason}")
            elif step.action != chain.APPLY:
                self._outcome("skipped", step.bundle, f"skipped: {step.reason}", reason=step.action)
        return selection

    def _strict_step(self, bundle: Bundle, host: _EngineHost) -> chain.Step:
        pairs = bundle.manifest.images
        if all(host.has_image(p.target.image_id) and not host.containers_on(p.base.image_id) for p in pairs):
            targets, bases = (", ".join(getattr(p, which).name for p in pairs) for which in ("target", "base"))
            return chain.Step(bundle, "already-applied", f"{targets} {'is' if len(pairs) == 1 else 'are'} already in "
                                                         f"the engine and no container to swap runs {bases}")
        for rebuild in read_rebuilds(bundle):  # every base, before anything changes
            if not host.has_image(rebuild.target_id):
                require_base(self.engine, bundle, rebuild)
        if not self.options.allow_downgrade:
            chain.refuse_downgrade(bundle)
        return chain.Step(bundle, chain.APPLY)

    def _check_container_names(self) -> None:
        for name in self.options.containers or []:
            if self.engine.inspect_container(name) is None:
                raise UsageError(f"no container named {name} (see docker ps -a)")

    def _names(self, *image_ids: str) -> list[str] | None:
        """The ``--container`` names that run one of ``image_ids`` now; None (every container) without them."""
        if self.options.containers is None:
            return None
        host = _EngineHost(self.engine, self.options)
        return [name for image_id in image_ids for name in host.containers_on(image_id)]

    # -- checking

    def _verify(self, bundles: list[Bundle]) -> dict[str, list[Rebuild]]:
        def advance(n: int) -> None:
            bar(n)
            faults.killpoint("verify")

        with progress.bar("verify", sum(b.size for b in bundles) or None, self.options.progress_bars) as bar:
            for bundle in bundles:
                verify_payloads(bundle, advance)
                self.reporter.progress(f"{bundle.path}: signature and every payload verified (key "
                                       f"{bundle.signer.key_id if bundle.signer else '?'})")
        return {bundle.path: read_rebuilds(bundle) for bundle in bundles}

    def _preflight(self, bundles: list[Bundle], rebuilds: dict[str, list[Rebuild]]) -> None:
        """Refuse, before anything changes, what the run could not finish or should not do."""
        self._survey(bundles, rebuilds)
        if not self.options.allow_downgrade:
            for bundle in bundles:
                for rebuild in rebuilds[bundle.path]:
                    self._refuse_tag_downgrade(bundle, rebuild)
        sizes = []
        for bundle in bundles:
            sizes.append(_load_size(self.engine, rebuilds[bundle.path]))
        if any(sizes):
            diskspace.check(self.state.work_path, self.engine.data_root(), sizes, self.reporter.progress)

    def _survey(self, bundles: list[Bundle], rebuilds: dict[str, list[Rebuild]]) -> None:
        """Check every set of containers to swap (dependents refuse the run) and say, before any image is
        loaded, which containers will be left out and why."""
        self.skipped = {}
        if not self.options.swap:
            return
        for bundle in bundles:
            here = [r for r in rebuilds[bundle.path] if self.engine.find_image(r.base_id) is not None]
            if not here:
                continue  # made by a bundle before it in the chain: surveyed when its swap plans
            found = survey(self.engine, _bases(here), self._names(*_bases(here)), {r.base_id: r.target_tags for r in here})
            self.skipped[bundle.path] = found.skipped
            for skipped in found.skipped:
                on = ", ".join(r.base.name for r in here)
                self.reporter.progress(printable(f"{bundle.path}: container {skipped['name']} will be left on "
                                                 f"{on}: {skipped['reason']}"))

    def _hold_back(self, bundles: list[Bundle]) -> tuple[list[Bundle], list[str]]:
        """Leave out each bundle whose last attempt was rolled back and the rest of its chain."""
        last: dict[str, dict] = {}
        for attempt in self.journal.attempts():
            digest = (attempt.begin.get("bundle") or {}).get("sha256")
            if digest and attempt.closed is not None:
                last[digest] = attempt.closed
        kept, held = chain.hold_back(bundles, last)
        for bundle, message in held:
            self._outcome("held-back", bundle, f"held back: {message}")
        return kept, [message for _, message in held]

    def _refuse_tag_downgrade(self, bundle: Bundle, rebuild: Rebuild) -> None:
        target_created = chain.parse_time(rebuild.target.created)
        for tag in rebuild.target_tags:
            current = self.engine.find_image(tag)
            if current is None or current["Id"] == rebuild.target_id or target_created is None:
                continue
            created = chain.parse_time(current.get("Created"))
            if created is not None and created > target_created:
                raise DowngradeError(f"{bundle.path} would move {tag} from {current['Id'][:19]} (created "
                                     f"{current.get('Created')}) back to the older {rebuild.target_id[:19]} (created "
                                     f"{rebuild.target.created}); pass --allow-downgrade to apply it anyway")

    # -- applying

    def _apply_one(self, bundle: Bundle, rebuilds: list[Rebuild]) -> None:
        left_out = {skipped["name"] for skipped in self.skipped.get(bundle.path, [])}
        host = _EngineHost(self.engine, self.options)
        names = [n for r in rebuilds for n in host.containers_on(r.base_id) if n not in left_out]
        loaded = all(self.engine.find_image(r.target_id) is not None for r in rebuilds)
        if loaded and not names:
            self._outcome("already-applied", bundle, f"already applied: {_names_of(rebuilds, 'target')} "
                                                     f"{'is' if len(rebuilds) == 1 else 'are'} already in the engine "
                                                     f"and no container to swap runs {_names_of(rebuilds, 'base')}")
            return
        size = _load_size(self.engine, rebuilds)
        attempt = new_id()
        summary = {"bundle": bundle_record(bundle), **_images_record(bundle)}
        self.journal.append({"type": "begin", "id": attempt, "pid": os.getpid(), "containers": names, **summary})
        recorder = _Recorder(self.journal, attempt)
        try:
            with progress.bar("apply", size, self.options.progress_bars and size > 0) as advance:
                outcome = apply_to_engine(bundle, self.engine, containers=self._names(*_bases(rebuilds)),
                                          swap_containers=self.options.swap, grace=self.options.grace, dry_run=False,
                                          log=self.reporter.progress, work_dir=self.state.work_path,
                                          observer=recorder, advance=advance)
        except SwapFailedNotRolledBack as exc:
            self.journal.append({"type": "note", "id": attempt, "message": str(exc)})
            raise  # the attempt stays open: the next run's recovery finishes what the rollback could not
        except DeltaimgError as exc:
            if self.termination is not None and self.termination.received:
                raise KeyboardInterrupt from None  # stopped, not failed: the next run's recovery confirms
            failed = "rolled-back" if isinstance(exc, SwapFailedRolledBack) else "failed"
            self.journal.append({"type": "end", "id": attempt, "outcome": failed, "message": str(exc), "loaded": None,
                                 "containers": recorder.swapped + recorder.rolled_back, **summary})
            raise
        swapped = [_swap_record(result) for result in outcome.swapped]
        self.journal.append({"type": "end", "id": attempt, "outcome": "applied", "loaded": outcome.loaded,
                             "containers": swapped, **summary})
        done = f"swapped {', '.join(s['name'] for s in swapped)}" if swapped else "no container to swap"
        self._outcome("applied", bundle, f"applied: {bundle.manifest.name}; {done}",
                      image_id=rebuilds[0].target_id, loaded=outcome.loaded, containers=swapped,
                      skipped_containers=self.skipped.get(bundle.path, []))

    def _outcome(self, event: str, bundle: Bundle, text: str, **extra: object) -> None:
        record = {"bundle": bundle_record(bundle), **_images_record(bundle), **extra}
        self.reporter.outcome(event, record, f"{bundle.path}: {text}")


class _Recorder:
    """Journals a swap's progress (deltaimg.swap.SwapObserver) and fires the crash tests' kill points."""

    KILL_AFTER = {"stopped": "stop", "renamed": "rename", "created": "create", "started": "start", "ready": "cleanup"}

    def __init__(self, journal: Journal, attempt: str) -> None:
        self.journal = journal
        self.attempt = attempt
        self.swapped: list[dict] = []
        self.rolled_back: list[dict] = []  # in swap order, as the rollback restores them

    def planned(self, plans: list[SwapResult]) -> None:
        containers = [{"name": p.name, "old_container": p.old_container_id, "started": p.started, "paused": p.paused,
                       "state": p.state, "image": p.target_image_id,
                       **({"compose": p.compose.as_json()} if p.compose else {})} for p in plans]
        self.journal.append({"type": "swap", "id": self.attempt, "containers": containers})

    def step(self, plan: SwapResult, step: str) -> None:
        recorded = {"begin": "begin", "ready": "ready", "removed": "done", "rolled-back": "rolled-back"}.get(step)
        if recorded:
            self.journal.append({"type": "container", "id": self.attempt, "name": plan.name, "step": recorded})
        if step == "removed":
            self.swapped.append({"name": plan.name, "old_container": plan.old_container_id})
        if step == "rolled-back":
            self.rolled_back.append({"name": plan.name, "old_container": plan.old_container_id,
                                     "action": "rolled-back"})
        if step in self.KILL_AFTER:
            faults.killpoint(self.KILL_AFTER[step])


class _EngineHost:
    """The engine as :mod:`deltaimg.apply.chain` sees it: a snapshot of its images and containers."""

    def __init__(self, engine: Engine, options: Options) -> None:
        self._images = {image["Id"]: image for image in engine.all_images()}
        self._containers = engine.containers()
        found = [engine.inspect_container(name) for name in options.containers or []]  # a name or an ID
        self._ids = None if options.containers is None else {info["Id"] for info in found if info}
        self._swap = options.swap

    def has_image(self, image_id: str) -> bool:
        return image_id in self._images

    def containers_on(self, image_id: str) -> list[str]:
        if not self._swap:
            return []
        on = [c for c in self._containers if c.get("ImageID") == image_id and c.get("Names")]
        return [c["Names"][0].lstrip("/") for c in on if self._ids is None or c["Id"] in self._ids]

    def images_in_use(self) -> dict[str, tuple[str | None, list[str]]]:
        used = {}
        for container in self._containers:
            image = self._images.get(container.get("ImageID", ""))
            if image is not None:
                created = datetime.datetime.fromtimestamp(image.get("Created", 0), datetime.timezone.utc).isoformat()
                used[image["Id"]] = (created, [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"])
        return used


def _bases(rebuilds: list[Rebuild]) -> tuple[str, ...]:
    return tuple(r.base_id for r in rebuilds)


def _names_of(rebuilds: list[Rebuild], which: str) -> str:
    return ", ".join(getattr(r, which).name for r in rebuilds)


def _load_size(engine: Engine, rebuilds: list[Rebuild]) -> int:
    """Bytes the rebuild of the targets the engine lacks writes."""
    return sum(load_size(engine, r) for r in rebuilds if engine.find_image(r.target_id) is None)


def _images_record(bundle: Bundle) -> dict:
    """What the journal and the outcome records say a bundle updates: ``from`` and ``to`` for one
    image; ``images``, a list of them, for several."""
    pairs = [{"from": pair.base.as_json(), "to": pair.target.as_json()} for pair in bundle.manifest.images]
    return pairs[0] if len(pairs) == 1 else {"images": pairs}


def _swap_record(result: SwapResult) -> dict:
    return {"name": result.name, "old_container": result.old_container_id, "new_container": result.new_container_id}
