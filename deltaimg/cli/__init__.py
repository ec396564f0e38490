"""The command line. Thin: parse, call one function, print its result.

Parsed with the standard library's argparse: the command line needs nothing more, and every
dependency weighs on every air-gapped host's install kit (docs/install.md).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable, List, NoReturn, Optional

from deltaimg import __version__, interrupts, report
from deltaimg.cli import grammar

from deltaimg.bundle import format as bundle_format, keys
from deltaimg.errors import DeltaimgError, UsageError, printable


def _emit(as_json: bool, data: dict, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:  # names and labels come from images and bundles: escapes shown, not obeyed
            print(printable(line))


def keygen(name: str, force: bool, passphrase_file: Optional[str]) -> None:
    """Create an Ed25519 signing key pair, protected by a passphrase if one is given."""
    from deltaimg.bundle import signing

    key_id = signing.generate(name, keys.passphrase(passphrase_file), force)
    print(f"wrote {name} (private, keep it on the build host) and {name}.pub (copy to edge hosts); key id {key_id}")


def make(images: List[str], output: str, key: str, passphrase_file: Optional[str], platform: Optional[str],
         split_size: Optional[str], force: bool, as_json: bool, quiet: bool) -> None:
    """Compare base and target images (one pair, or several) and write one signed bundle with what changed."""
    from deltaimg import progress
    from deltaimg.units import parse_size
    from deltaimg.images import open_image
    from deltaimg.images.model import layer_bytes
    from deltaimg.make.build import make_images

    if len(images) % 2:
        raise UsageError(f"make takes images in pairs, BASE TARGET [BASE TARGET ...]; {len(images)} given, "
                         f"so {printable(images[-1])} has no target")
    part_size = parse_size(split_size) if split_size is not None else None

    private = keys.signing_key(key, passphrase_file)
    opened = [open_image(image, platform) for image in images]
    pairs = list(zip(opened[0::2], opened[1::2]))
    sizes = [layer_bytes(lyr for lyr in target.layers if lyr.diff_id not in base.diff_ids) for base, target in pairs]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]  # None: unknown until exported
    with progress.bar("make", total, not (quiet or as_json)) as advance:
        manifest = make_images(pairs, output, private, advance, part_size, force)
    written = output if manifest["files"] == [output] else f"{manifest['files'][0]} to {manifest['files'][-1]}"
    _emit(as_json, manifest, report.made_lines(written, manifest))


def _one_bundle(path: str) -> str:
    """The bundle file ``path`` names: itself, or ``PATH.001`` when only a split bundle's parts exist."""
    from deltaimg.bundle.reader import bundle_files

    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; name one bundle file (apply takes folders)")
    return bundle_files([path])[0]


def _open(bundle: str, trust: Optional[List[str]], trust_dir: Optional[str], quiet: bool):
    from deltaimg import progress
    from deltaimg.bundle.reader import open_bundle

    trusted = keys.trusted_keys(trust or [], trust_dir)
    bundle = _one_bundle(bundle)
    size = os.path.getsize(bundle) if os.path.isfile(bundle) and not bundle.endswith(".001") else None
    with progress.bar("verify", size, not quiet) as advance:
        return open_bundle(bundle, trusted, progress=advance)


def verify(bundle: str, trust: Optional[List[str]], trust_dir: Optional[str], as_json: bool, quiet: bool) -> None:
    """Check a bundle's signature and every payload hash; change nothing."""
    opened = _open(bundle, trust, trust_dir, quiet or as_json)
    m = opened.manifest
    pairs = [{"base": pair.base.as_json(), "target": pair.target.as_json()} for pair in m.images]
    data = {"bundle": bundle, "valid": True, "key_id": opened.signer.key_id if opened.signer else None,
            **(pairs[0] if len(pairs) == 1 else {"images": pairs})}
    _emit(as_json, data, [f"{bundle}: OK, signed by key {data['key_id']}; {m.name}"])


def inspect(bundle: str, trust: Optional[List[str]], trust_dir: Optional[str], as_json: bool) -> None:
    """Show what a bundle updates and how; the signature is checked when a trusted key is given."""
    from deltaimg.bundle.reader import open_bundle, read_header, read_manifest

    bundle = _one_bundle(bundle)
    manifest_bytes, signature, payload_start, size = read_header(bundle)
    trusted = keys.trusted_keys(trust or [], trust_dir)
    if trusted:
        m = open_bundle(bundle, trusted).manifest
        checked = "signature and payloads verified"
    else:
        m = read_manifest(manifest_bytes, bundle)
        checked = "NOT verified (pass --trust KEY.pub to check)"
    key_id = signature.get("key_id") if isinstance(signature, dict) else None
    if m.split:  # BUNDLE is the first part; the manifest says how large they are together
        size = payload_start + m.payload_area
    data, lines = report.inspection(bundle, size, key_id, bool(trusted), checked, m,
                                     bundle_format.stored_version(bundle))
    _emit(as_json, data, lines)


def diff(base: str, target: str, platform: Optional[str], limit: int, as_json: bool, quiet: bool) -> None:
    """Show what differs between two images: layers, files, packages and config."""
    from deltaimg import progress
    from deltaimg.diff.images import diff_images
    from deltaimg.images import open_image
    from deltaimg.images.model import layer_bytes

    base_image = open_image(base, platform)
    target_image = open_image(target, platform)
    with progress.bar("diff", layer_bytes([*base_image.layers, *target_image.layers]), not (quiet or as_json)) as advance:
        result = diff_images(base_image, target_image, advance)
    _emit(as_json, result, report.diff_lines(result, limit))


def apply(paths: List[str], trust: Optional[List[str]], trust_dir: Optional[str], base: Optional[List[str]],
          output: Optional[str], force: bool, platform: Optional[str], container: Optional[List[str]],
          no_swap: bool, grace: float, dry_run: bool, state_dir: Optional[str], engine: Optional[str], wait: float,
          allow_downgrade: bool, retry: bool, log_format: str, receipts: bool, as_json: bool, quiet: bool,
          to: Optional[str] = None, source: Optional[str] = None, ca_file: Optional[str] = None) -> None:
    """Verify bundles, rebuild the target images byte-exactly, load them into the engine and swap their containers."""
    if to or source or ca_file:
        if not to:
            raise UsageError("--from and --ca-file go with --to docker://HOST/REPO[:TAG] (push into a registry)")
        engine_only = [name for name, given in (("--base", base), ("--output", output), ("--dry-run", dry_run),
                                                ("--container", container), ("--engine", engine),
                                                ("--retry", retry), ("--wait", wait),
                                                ("--log-format json", log_format == "json")) if given]
        if engine_only:
            raise UsageError(f"{', '.join(engine_only)} cannot go with --to, which pushes into a registry and touches "
                             "no engine: leave them out")
        if len(paths) != 1:
            raise UsageError("--to pushes one bundle's target; give exactly one bundle")
        from deltaimg.apply.journal import state_dir_path
        from deltaimg.apply.site_push import PushOptions
        from deltaimg.engine.registry import parse_reference

        options = PushOptions(parse_reference(to, "--to"), parse_reference(source, "--from") if source else None,
                              ca_file, platform, allow_downgrade, state_dir_path(state_dir), receipts, not no_swap)
        _apply_to_registry(paths[0], trust, trust_dir, options, as_json, quiet)
        return
    if base or output:
        if not (base and output):
            raise UsageError("--base and --output go together (rebuild into an archive); give both or neither")
        if len(paths) != 1:
            raise UsageError("--base and --output rebuild one bundle; give exactly one")
        engine_only = [name for name, given in (("--dry-run", dry_run), ("--container", container), ("--no-swap", no_swap),
                                                ("--engine", engine), ("--retry", retry), ("--state-dir", state_dir),
                                                ("--wait", wait), ("--log-format json", log_format == "json"),
                                                ("--receipts", receipts)) if given]
        if engine_only:
            raise UsageError(f"{', '.join(engine_only)} {'is' if len(engine_only) == 1 else 'are'} for an apply into the "
                             "engine; --base and --output rebuild an archive and touch no engine: leave them out")
        from deltaimg import progress
        from deltaimg.apply.archive import apply_images_to_archive
        from deltaimg.apply.rebuild import read_rebuilds, rebuild_size
        from deltaimg.images import open_image

        opened = _open(paths[0], trust, trust_dir, quiet or as_json)
        base_images = [open_image(image, platform) for image in base]
        given = {image.config_digest for image in base_images}
        total = sum(rebuild_size(r) for r in read_rebuilds(opened) if r.base_id in given)
        with progress.bar("apply", total, not (quiet or as_json)) as advance:
            rebuilds = apply_images_to_archive(opened, base_images, output, force, advance, allow_downgrade)
        images = [{"image_id": r.target_id, "tags": r.target_tags} for r in rebuilds]
        data = {"bundle": paths[0], "output": output, **(images[0] if len(images) == 1 else {"images": images}),
                "outcome": "rebuilt"}
        named = ", ".join(f"{' '.join(r.target_tags) or '(untagged)'} {r.target_id[:19]}" for r in rebuilds)
        _emit(as_json, data, [f"{output}: {named} rebuilt, every layer matches its diff_id"])
        return
    from deltaimg.apply import runlog
    from deltaimg.apply import unattended
    from deltaimg.apply.journal import state_dir_path

    reporter = _reporter(log_format, as_json)
    options = unattended.Options(paths=list(paths), trusted=keys.trusted_keys(trust or [], trust_dir),
                                 state_dir=state_dir_path(state_dir), wait=wait, containers=container or None,
                                 swap=not no_swap, grace=grace, dry_run=dry_run, allow_downgrade=allow_downgrade,
                                 retry=retry, progress_bars=not (quiet or as_json or log_format == "json"),
                                 engine=engine, receipts=receipts)
    unattended.run(options, reporter)
    if isinstance(reporter, runlog.Collected):
        _emit(True, reporter.report(), [])


def _apply_to_registry(path: str, trust: Optional[List[str]], trust_dir: Optional[str], options, as_json: bool,
                       quiet: bool) -> None:
    from deltaimg import progress
    from deltaimg.apply import site_push
    from deltaimg.units import human_size

    opened = _open(path, trust, trust_dir, quiet or as_json)
    def log(line: str) -> None:
        if not as_json:  # the JSON document says it all at the end
            print(printable(line), flush=True)

    with progress.bar("apply", None, not (quiet or as_json)) as advance:
        result = site_push.run(opened, options, log, advance)
    pushed = result.pushed
    lines: list[str] = []
    if not pushed.already:
        lines.append(f"{pushed.target}: {pushed.image_id[:19]} pushed ({pushed.uploaded} layer(s) uploaded, "
                     f"{pushed.mounted} mounted from {pushed.source.rsplit(':', 1)[0]}, {pushed.present} already there); "
                     f"{human_size(pushed.bytes_pushed)} pushed of {human_size(pushed.image_bytes)}, the whole image")
    _emit(as_json, {"bundle": path, "outcome": "already there" if pushed.already else "pushed", **pushed.as_json(),
                    "services": result.services}, lines)


def _reporter(log_format: str, as_json: bool):
    from deltaimg.apply import runlog

    global _json_lines
    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format is text or json, not {log_format!r}")
    if as_json:
        return runlog.Collected()
    _json_lines = log_format == "json"
    return runlog.JsonLines() if _json_lines else runlog.TextLog()


def status(state_dir: Optional[str], limit: int, as_json: bool) -> None:
    """Show what apply did on this host: the journal of every bundle applied, and any run in progress."""
    from deltaimg.apply.journal import StateDir, state_dir_path
    from deltaimg.apply.lock import holder

    state = StateDir(state_dir_path(state_dir))
    if not os.path.isdir(state.path):
        raise UsageError(f"no state directory {state.path}: nothing was applied on this host yet (or pass --state-dir DIR)")
    attempts = state.journal.attempts()
    shown = attempts[-limit:] if limit > 0 else attempts
    running = holder(state.lock_path)
    data, lines = report.status(state.path, shown, len(attempts), running, state.journal.kept_receipts(),
                                state.journal.pushes())
    _emit(as_json, data, lines)


def receipts(directory: str, as_json: bool) -> None:
    """Show the receipts hosts wrote onto a stick (DIR/receipts/*.json): which took the update."""
    from deltaimg.apply.receipts import read_all

    folder, rows, left_out = read_all(directory)
    data, lines = report.receipts(folder, rows, left_out)
    _emit(as_json, data, lines)


def demo(directory: Optional[str], as_json: bool) -> int:
    """Run keygen, make, verify and apply on a built-in example image pair (no engine needed)."""
    from deltaimg.example import run_demo

    lines: list[str] = []
    result = run_demo(directory, lines.append)
    _emit(as_json, result, lines)
    return 0 if result["identical"] else 1


def version() -> None:
    """Print the version."""
    print(f"deltaimg {__version__}")


INTERRUPTED = 130
_json_lines = False  # set by apply --log-format json: its failure is logged as a JSON line too


def main() -> None:
    """Run the command line; every failure deltaimg expects ends as one line and its exit code."""
    previous = signal.signal(signal.SIGTERM, interrupts.interrupt)  # cron, systemd, kill: unwind like Ctrl-C
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # not when started with SIGINT ignored
        signal.signal(signal.SIGINT, interrupts.interrupt)
    try:
        command, arguments = grammar.parse(sys.argv[1:], COMMANDS)
        result = command(**arguments)
    except DeltaimgError as exc:
        from deltaimg.apply.runlog import write_error

        write_error(str(exc), exc.exit_code, _json_lines)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # a bug: still one line, saying what to report (DELTAIMG_DEBUG=1 shows where)
        if os.environ.get("DELTAIMG_DEBUG"):
            raise
        from deltaimg.apply.runlog import write_error

        write_error(f"unexpected {type(exc).__name__}: {exc}; this is a bug in deltaimg: please report it with the "
                    "command line (DELTAIMG_DEBUG=1 prints where it happened)", 1, _json_lines)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    sys.exit(result if isinstance(result, int) else 0)


def _interrupted() -> NoReturn:
    """Ctrl-C or SIGTERM: one line, and a JSON line too when the run logs them."""
    if _json_lines:
        from deltaimg.apply.runlog import JsonLines

        JsonLines().error("interrupted", INTERRUPTED)
    print("deltaimg: interrupted", file=sys.stderr)
    sys.exit(INTERRUPTED)


COMMANDS: dict[str, Callable[..., Optional[int]]] = {
    "keygen": keygen, "make": make, "verify": verify, "inspect": inspect, "diff": diff, "apply": apply,
    "status": status, "receipts": receipts, "demo": demo, "version": version}
