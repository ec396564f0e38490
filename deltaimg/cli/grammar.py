"""The command line's grammar: every command, option, metavar and default, and its help (argparse).

Help reads the way git's and skopeo's does (``usage: deltaimg make [options] BASE TARGET``, options
with named values such as ``--trust KEY.pub``). A wrong command line is a :class:`UsageError`, so it
ends as one line with exit code 2 like every other error, saying where the help is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Optional, Sequence

from deltaimg import __version__
from deltaimg.bundle.keys import DEFAULT_TRUST_DIR, PASSPHRASE_ENV
from deltaimg.errors import UsageError
from deltaimg.report import DEFAULT_LIMIT

SUMMARY = "Signed binary-delta bundles that update container images on air-gapped hosts."
IMAGE_FORMS = "docker-archive:FILE, oci-archive:FILE, oci:DIR, docker-daemon:REF or a path"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageErrors (one line, exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser(command: str, function: Callable, epilog: Optional[str] = None) -> _Parser:
    doc = (function.__doc__ or "").strip()
    return _Parser(prog=f"deltaimg {command}", description=doc, epilog=epilog, allow_abbrev=False,
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust", action="append", metavar="KEY.pub", help="public key to trust (repeatable)")
    parser.add_argument("--trust-dir", metavar="DIR",
                        help=f"directory of trusted *.pub keys (default {DEFAULT_TRUST_DIR} when no --trust)")


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object for scripts")


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _passphrase(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--passphrase-file", metavar="FILE",
                        help=f"file whose first line is the private key's passphrase (mode 0600); else ${PASSPHRASE_ENV}")


def _platform(parser: argparse.ArgumentParser, which: str) -> None:
    parser.add_argument("--platform", metavar="OS/ARCH", help=f"the image to use when {which} several")


def _images(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help=f"base image, the version the host has: {IMAGE_FORMS}")
    parser.add_argument("target", metavar="TARGET", help="target image, the version to ship; same forms")


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", metavar="DIR",
                        help="journal, lock and scratch space (default $DELTAIMG_STATE_DIR or /var/lib/deltaimg)")


def _keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="writes NAME (private, mode 0600) and NAME.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    _passphrase(p)


def _make(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="BASE TARGET", nargs="+",
                   help=f"base image, the version the host has ({IMAGE_FORMS}), then the target image, the version "
                        "to ship; several pairs in one bundle update an application's images together")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="bundle file to write")
    p.add_argument("--key", metavar="KEY", required=True, help="private signing key (from deltaimg keygen)")
    _passphrase(p)
    _platform(p, "an input holds")
    p.add_argument("--split-size", metavar="SIZE",
                   help="write a bundle larger than SIZE (e.g. 3900M for FAT32) as parts FILE.001, .002, ...")
    p.add_argument("--force", action="store_true", help="replace an existing FILE (and the parts of a bundle there)")
    _json(p)
    _quiet(p)


def _verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle file")
    _trust(p)
    _json(p)
    _quiet(p)


def _inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle file")
    _trust(p)
    _json(p)


def _diff(p: argparse.ArgumentParser) -> None:
    _images(p)
    _platform(p, "an input holds")
    p.add_argument("--limit", metavar="N", type=int, default=DEFAULT_LIMIT,
                   help=f"files listed per kind of change (0: all; default {DEFAULT_LIMIT}); --json lists all")
    _json(p)
    _quiet(p)


APPLY_EPILOG = """\
Given a folder or several bundles, applies those that take this host forward, in chain order.
With --base and --output, rebuilds one bundle into an archive instead and leaves the engine alone;
with --to, rebuilds it from the base in a registry and pushes the target there."""


def _apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", metavar="BUNDLE", nargs="+",
                   help="bundle files, first parts of split bundles, or folders of them")
    _trust(p)
    p.add_argument("--base", metavar="IMAGE", action="append",
                   help="rebuild from this image (archive or layout) instead of the engine (repeatable: a bundle of "
                        "several images rebuilds the target of each base given)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="with --base: write the target image(s) as one docker save archive")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    p.add_argument("--to", metavar="docker://HOST[:PORT]/REPO[:TAG]",
                   help="rebuild the target from the base in this registry and push it there (docs/site.md)")
    p.add_argument("--from", dest="source", metavar="docker://HOST[:PORT]/REPO[:TAG]",
                   help="with --to: where the base is in that registry (default: its own repository and tag there)")
    p.add_argument("--ca-file", metavar="PEM", help="with --to: CA certificates to trust the registry's TLS with")
    _platform(p, "the base holds")
    p.add_argument("--container", action="append", metavar="NAME", help="swap only this container (repeatable)")
    p.add_argument("--no-swap", action="store_true", help="load the target image; touch no container")
    p.add_argument("--grace", metavar="SECONDS", type=float, default=10.0,
                   help="how long a container without healthcheck must run before it counts as up (default 10)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    _state_dir(p)
    p.add_argument("--engine", metavar="ENGINE",
                   help="docker (default), podman[=unix:///PATH.sock] or containerd[=SOCKET[,NAMESPACE]]; "
                        "default $DELTAIMG_ENGINE")
    p.add_argument("--wait", metavar="SECONDS", type=float, default=0.0,
                   help="wait up to SECONDS for another run to finish instead of exiting at once")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="apply a bundle whose target is older than what it replaces")
    p.add_argument("--retry", action="store_true", help="try again a bundle whose last attempt was rolled back")
    p.add_argument("--log-format", metavar="text|json", default="text",
                   help="text: readable lines (default); json: one JSON object per line (for cron and log collectors)")
    p.add_argument("--receipts", action="store_true",
                   help="write this run's receipt into receipts/ beside the bundles (a stick carried to many hosts)")
    _json(p)
    _quiet(p)


def _status(p: argparse.ArgumentParser) -> None:
    _state_dir(p)
    p.add_argument("--limit", metavar="N", type=int, default=20, help="show the last N attempts (0: all; default 20)")
    _json(p)


def _receipts(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="a stick (its receipts/ folder is read) or a receipts folder")
    _json(p)


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", dest="directory", metavar="DIR",
                   help="keep the example files in DIR (by default they are removed at the end)")
    _json(p)


def _version(p: argparse.ArgumentParser) -> None:
    """No options."""


GRAMMAR: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "keygen": _keygen, "make": _make, "verify": _verify, "inspect": _inspect, "diff": _diff, "apply": _apply,
    "status": _status, "receipts": _receipts, "demo": _demo, "version": _version}
EPILOGS = {"apply": APPLY_EPILOG}


def overview(commands: dict[str, Callable]) -> str:
    """``deltaimg --help``: usage, the commands with their first line, where to read more."""
    width = max(len(name) for name in commands)
    lines = ["usage: deltaimg [--version] [--help] <command> [<args>]", "", SUMMARY, "", "commands:"]
    for name, function in commands.items():
        first = (function.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name.ljust(width)}  {first}")
    lines += ["", "See 'deltaimg <command> --help' for a command's options, docs/ for the whole story."]
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str], commands: dict[str, Callable]) -> tuple[Callable, dict]:
    """The function ``argv`` names and its keyword arguments; --help and --version print and exit 0.
    No command at all prints the overview and exits 2, as a wrong command line does."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(overview(commands))
        sys.exit(0 if argv else UsageError.exit_code)
    if argv[0] == "--version":
        print(f"deltaimg {__version__}")
        sys.exit(0)
    name = argv[0]
    if name not in commands:
        what = "option" if name.startswith("-") else "command"
        raise UsageError(f"no {what} {name!r} (see deltaimg --help)")
    parser = _parser(name, commands[name], EPILOGS.get(name))
    GRAMMAR[name](parser)
    namespace = parser.parse_intermixed_args(argv[1:])  # options before, between or after the bundles
    return commands[name], vars(namespace)
