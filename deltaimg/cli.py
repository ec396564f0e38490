"""The command line. Thin: parse, call one function, print its result."""

from __future__ import annotations

import json
import os
import sys
from typing import List, NoReturn, Optional

import typer

from deltaimg import __version__, report

from deltaimg.bundle import keys
from deltaimg.errors import DeltaimgError, UsageError, printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Signed binary-delta bundles that update container images on air-gapped hosts.")

TrustOpt = typer.Option(None, "--trust", help="Public key to trust (repeatable).")
TrustDirOpt = typer.Option(None, "--trust-dir", help=f"Directory of trusted *.pub keys (default {keys.DEFAULT_TRUST_DIR} when no --trust).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object for scripts.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
PassphraseFileOpt = typer.Option(None, "--passphrase-file", help=f"File whose first line is the private key's passphrase (mode 0600); else ${keys.PASSPHRASE_ENV}.")


def _emit(as_json: bool, data: dict, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:  # names and labels come from images and bundles: escapes shown, not obeyed
            print(printable(line))


@app.command()
def keygen(name: str = typer.Argument(..., help="Writes NAME (private, mode 0600) and NAME.pub."),
           force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
           passphrase_file: Optional[str] = PassphraseFileOpt) -> None:
    """Create an Ed25519 signing key pair, protected by a passphrase if one is given."""
    from deltaimg.bundle import signing

    key_id = signing.generate(name, keys.passphrase(passphrase_file), force)
    print(f"wrote {name} (private, keep it on the build host) and {name}.pub (copy to edge hosts); key id {key_id}")


@app.command()
def make(base: str = typer.Argument(..., help="Base image, the version the host has: docker-archive:FILE, oci-archive:FILE, oci:DIR, docker-daemon:REF or a path."),
         target: str = typer.Argument(..., help="Target image, the version to ship; same forms."),
         output: str = typer.Option(..., "--output", "-o", help="Bundle file to write."),
         key: str = typer.Option(..., "--key", help="Private signing key (from deltaimg keygen)."),
         passphrase_file: Optional[str] = PassphraseFileOpt,
         platform: Optional[str] = typer.Option(None, "--platform", help="OS/ARCH when an input holds several."),
         split_size: Optional[str] = typer.Option(None, "--split-size", help="Write a bundle larger than this (e.g. 3900M for FAT32) as parts OUTPUT.001, .002, ..."),
         force: bool = typer.Option(False, "--force", help="Replace an existing OUTPUT (and the parts of a bundle there)."),
         as_json: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Compare two images and write one signed bundle with what changed."""
    from deltaimg import progress
    from deltaimg.units import parse_size
    from deltaimg.images import open_image
    from deltaimg.images.model import layer_bytes
    from deltaimg.make.build import make_bundle

    part_size = parse_size(split_size) if split_size is not None else None

    private = keys.signing_key(key, passphrase_file)
    base_image = open_image(base, platform)
    target_image = open_image(target, platform)
    total = layer_bytes(lyr for lyr in target_image.layers if lyr.diff_id not in base_image.diff_ids)
    with progress.bar("make", total, not (quiet or as_json)) as advance:
        manifest = make_bundle(base_image, target_image, output, private, advance, part_size, force)
    written = output if manifest["files"] == [output] else f"{manifest['files'][0]} to {manifest['files'][-1]}"
    lines = [f"{written}: {report.name_of(manifest['base'])} -> {report.name_of(manifest['target'])}",
             *report.layer_lines(manifest["layers"]),
             report.ratio_line(manifest["bundle_size"], manifest["full_image_size"]),
             *report.change_lines(manifest["changes"])]
    _emit(as_json, manifest, lines)


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


@app.command()
def verify(bundle: str = typer.Argument(..., help="Bundle file."), trust: Optional[List[str]] = TrustOpt,
           trust_dir: Optional[str] = TrustDirOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Check a bundle's signature and every payload hash; change nothing."""
    opened = _open(bundle, trust, trust_dir, quiet or as_json)
    m = opened.manifest
    data = {"bundle": bundle, "valid": True, "key_id": opened.signer.key_id if opened.signer else None,
            "base": m.base.as_json(), "target": m.target.as_json()}
    _emit(as_json, data, [f"{bundle}: OK, signed by key {data['key_id']}; {m.base.name} -> {m.target.name}"])


@app.command()
def inspect(bundle: str = typer.Argument(..., help="Bundle file."), trust: Optional[List[str]] = TrustOpt,
            trust_dir: Optional[str] = TrustDirOpt, as_json: bool = JsonOpt) -> None:
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
    data, lines = report.inspection(bundle, size, key_id, bool(trusted), checked, m)
    _emit(as_json, data, lines)


@app.command()
def diff(base: str = typer.Argument(..., help="Base image, the version the host has: docker-archive:FILE, oci-archive:FILE, oci:DIR, docker-daemon:REF or a path."),
         target: str = typer.Argument(..., help="Target image, the version to ship; same forms."),
         platform: Optional[str] = typer.Option(None, "--platform", help="OS/ARCH when an input holds several."),
         limit: int = typer.Option(report.DEFAULT_LIMIT, "--limit", help="Files listed per kind of change (0: all); --json lists all."),
         as_json: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
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


LogFormatOpt = typer.Option("text", "--log-format", help="text: readable lines; json: one JSON object per line (for cron and log collectors).")
StateDirOpt = typer.Option(None, "--state-dir", help="Journal, lock and scratch space (default $DELTAIMG_STATE_DIR or /var/lib/deltaimg).")


@app.command()
def apply(paths: List[str] = typer.Argument(..., help="Bundle files, first parts of split bundles, or folders of them."),
          trust: Optional[List[str]] = TrustOpt, trust_dir: Optional[str] = TrustDirOpt,
          base: Optional[str] = typer.Option(None, "--base", help="Rebuild from this image (archive or layout) instead of the engine."),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="With --base: write the target image as a docker save archive."),
          force: bool = typer.Option(False, "--force", help="Overwrite --output."),
          platform: Optional[str] = typer.Option(None, "--platform", help="OS/ARCH when the base holds several."),
          container: Optional[List[str]] = typer.Option(None, "--container", help="Swap only this container (repeatable)."),
          no_swap: bool = typer.Option(False, "--no-swap", help="Load the target image; touch no container."),
          grace: float = typer.Option(10.0, "--grace", help="Seconds a container without healthcheck must run before it counts as up."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
          state_dir: Optional[str] = StateDirOpt,
          wait: float = typer.Option(0.0, "--wait", help="Wait up to SECONDS for another run to finish instead of exiting at once."),
          allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Apply a bundle whose target is older than what it replaces."),
          retry: bool = typer.Option(False, "--retry", help="Try again a bundle whose last attempt was rolled back."),
          log_format: str = LogFormatOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """Verify bundles, rebuild the target images byte-exactly, load them into the engine and swap their containers.

    Given a folder or several bundles, applies those that take this host forward, in chain order.
    With --base and --output, rebuilds one bundle into an archive instead and leaves the engine alone.
    """
    if base or output:
        if not (base and output):
            raise UsageError("--base and --output go together (rebuild into an archive); give both or neither")
        if len(paths) != 1:
            raise UsageError("--base and --output rebuild one bundle; give exactly one")
        from deltaimg import progress
        from deltaimg.apply.archive import apply_to_archive
        from deltaimg.apply.rebuild import read_rebuild, rebuild_size
        from deltaimg.images import open_image

        opened = _open(paths[0], trust, trust_dir, quiet or as_json)
        base_image = open_image(base, platform)
        with progress.bar("apply", rebuild_size(read_rebuild(opened)), not (quiet or as_json)) as advance:
            rebuild = apply_to_archive(opened, base_image, output, force, advance, allow_downgrade)
        data = {"bundle": paths[0], "output": output, "image_id": rebuild.target_id, "tags": rebuild.target_tags,
                "outcome": "rebuilt"}
        _emit(as_json, data, [f"{output}: {' '.join(rebuild.target_tags) or '(untagged)'} {rebuild.target_id[:19]} "
                              "rebuilt, every layer matches its diff_id"])
        return
    from deltaimg.apply import runlog
    from deltaimg.apply import unattended
    from deltaimg.apply.journal import state_dir_path

    reporter = _reporter(log_format, as_json)
    options = unattended.Options(paths=list(paths), trusted=keys.trusted_keys(trust or [], trust_dir),
                                 state_dir=state_dir_path(state_dir), wait=wait, containers=container or None,
                                 swap=not no_swap, grace=grace, dry_run=dry_run, allow_downgrade=allow_downgrade,
                                 retry=retry, progress_bars=not (quiet or as_json or log_format == "json"))
    unattended.run(options, reporter)
    if isinstance(reporter, runlog.Collected):
        _emit(True, reporter.report(), [])


def _reporter(log_format: str, as_json: bool):
    from deltaimg.apply import runlog

    global _json_lines
    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format is text or json, not {log_format!r}")
    if as_json:
        return runlog.Collected()
    _json_lines = log_format == "json"
    return runlog.JsonLines() if _json_lines else runlog.TextLog()


@app.command()
def status(state_dir: Optional[str] = StateDirOpt,
           limit: int = typer.Option(20, "--limit", help="Show the last N attempts (0: all)."),
           as_json: bool = JsonOpt) -> None:
    """Show what apply did on this host: the journal of every bundle applied, and any run in progress."""
    from deltaimg.apply.journal import StateDir, state_dir_path
    from deltaimg.apply.lock import holder

    state = StateDir(state_dir_path(state_dir))
    if not os.path.isdir(state.path):
        raise UsageError(f"no state directory {state.path}: nothing was applied on this host yet (or pass --state-dir DIR)")
    attempts = state.journal.attempts()
    shown = attempts[-limit:] if limit > 0 else attempts
    running = holder(state.lock_path)
    data, lines = report.status(state.path, shown, len(attempts), running)
    _emit(as_json, data, lines)


@app.command()
def demo(directory: Optional[str] = typer.Option(None, "--dir", help="Keep the example files here."),
         as_json: bool = JsonOpt) -> None:
    """Run keygen, make, verify and apply on a built-in example image pair (no engine needed)."""
    from deltaimg.example import run_demo

    lines: list[str] = []
    result = run_demo(directory, lines.append)
    _emit(as_json, result, lines)
    if not result["identical"]:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    print(f"deltaimg {__version__}")


# Older typer raises click's own usage errors, typer 0.2x those of the copy of click it carries (and
# click itself may not be installed): find the class through typer's public one.
CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


INTERRUPTED = 130
_json_lines = False  # set by apply --log-format json: its failure is logged as a JSON line too


def main() -> None:
    try:
        result = app(standalone_mode=False)
    except DeltaimgError as exc:
        from deltaimg.apply.runlog import write_error

        write_error(str(exc), exc.exit_code, _json_lines)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # older typer lets an interrupt through
        _interrupted()
    except CLICK_ERRORS as exc:  # a wrong command line: one line too, with where to look
        print(f"deltaimg: error: {printable(exc.format_message())} (see deltaimg --help)", file=sys.stderr)
        sys.exit(UsageError.exit_code)
    if result == INTERRUPTED:  # typer 0.2x turns an interrupt into Exit(130), and says nothing
        _interrupted()
    sys.exit(result if isinstance(result, int) else 0)


def _interrupted() -> NoReturn:
    """Ctrl-C, or SIGTERM during an apply: one line, and a JSON line too when the run logs them."""
    if _json_lines:
        from deltaimg.apply.runlog import JsonLines

        JsonLines().error("interrupted", INTERRUPTED)
    print("deltaimg: interrupted", file=sys.stderr)
    sys.exit(INTERRUPTED)
