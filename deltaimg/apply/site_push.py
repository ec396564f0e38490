"""``apply BUNDLE --to docker://HOST/REPO:TAG`` as a whole: the push into the site registry
(deltaimg.apply.registry); then, when this host's engine is a Swarm manager, the services on the
base moved onto the pushed image by its manifest digest (``HOST/REPO:TAG@sha256:…``, so every node
pulls the very image pushed) with Swarm's own rolling update (deltaimg.apply.swarm); then one
``push`` record in the journal, which ``deltaimg status`` shows, and, with ``--receipts``, the
run's receipt beside the bundle (deltaimg.apply.receipts).

A push changes nothing on this host, so it takes no lock and leaves no attempt to recover: the
record is written once the push ended, however it ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from deltaimg.apply import receipts, swarm
from deltaimg.apply.journal import StateDir, bundle_record, new_id
from deltaimg.apply.rebuild import read_rebuild
from deltaimg.apply.registry import Pushed, apply_to_registry, default_source, target_ref
from deltaimg.bundle.reader import Bundle
from deltaimg.engine import choose
from deltaimg.engine.registry import RegistryRef
from deltaimg.errors import DeltaimgError, EngineError
from deltaimg.progress import Advance

INTERRUPTED = 130


@dataclass
class PushOptions:
    to: RegistryRef
    source: RegistryRef | None = None
    ca_file: str | None = None
    platform: str | None = None
    allow_downgrade: bool = False
    state_dir: str = ""
    receipts: bool = False  # write the run's receipt into receipts/ beside the bundle
    services: bool = True  # on a Swarm manager, move the services on the base onto the pushed image


@dataclass
class PushResult:
    pushed: Pushed
    services: list[dict] = field(default_factory=list)


def run(bundle: Bundle, options: PushOptions, log: Callable[[str], None], advance: Advance | None = None) -> PushResult:
    state = StateDir(options.state_dir)
    state.create()
    to = target_ref(bundle, options.to)
    record = {"type": "push", "id": new_id(), "bundle": bundle_record(bundle), "registry": str(to),
              "from": bundle.manifest.base.as_json(), "to": bundle.manifest.target.as_json(),
              "digest": None, "message": None, "services": []}
    folder = os.path.dirname(os.path.abspath(bundle.path)) if options.receipts else None
    try:
        pushed = apply_to_registry(bundle, to, options.source, options.ca_file, options.platform, log, advance,
                                   options.allow_downgrade)
        record["digest"] = pushed.digest
        result = PushResult(pushed)
        if options.services:
            result.services = _update_services(bundle, options, to, pushed, log, record)
    except DeltaimgError as exc:
        _close(state, folder, record, "failed", exc.exit_code, str(exc), log)
        raise
    except KeyboardInterrupt:
        _close(state, folder, record, "interrupted", INTERRUPTED, "interrupted", log)
        raise
    _close(state, folder, record, "already there" if pushed.already else "pushed", 0, None, log)
    return result


def _update_services(bundle: Bundle, options: PushOptions, to: RegistryRef, pushed: Pushed,
                     log: Callable[[str], None], record: dict) -> list[dict]:
    try:
        engine = choose.connect(None)
    except EngineError as exc:
        log(f"no Swarm service updated: this host has no engine to ask ({exc})")
        return []
    source = options.source or default_source(bundle, to)
    base_tags = [*bundle.manifest.base.tags, f"{source.host}/{source.repository}:{source.tag or 'latest'}"]
    image = f"{to.host}/{to.repository}:{to.tag}@{pushed.digest}"
    updated = swarm.update_services(engine, read_rebuild(bundle), base_tags, False, log, image=image,
                                    digests=tuple(pushed.base_digests))
    record["services"] = [{"name": s["name"], "outcome": s["outcome"]} for s in updated]
    return updated


def _close(state: StateDir, folder: str | None, record: dict, outcome: str, exit_code: int, message: str | None,
           log: Callable[[str], None]) -> None:
    record = {**record, "outcome": outcome, "message": message}
    try:
        state.journal.append(record)
    except DeltaimgError as exc:
        if exit_code == 0:
            raise
        log(f"the push's record is not in the journal: {exc}")
    if folder is not None:
        receipts.leave(folder, state.journal, log, receipts.push_receipt(record, exit_code))
