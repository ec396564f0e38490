"""Errors a user can hit, each with its own exit code.

Every error deltaimg raises on purpose is a DeltaimgError: the CLI prints its message on one
line and exits with its code. Anything else escaping is a bug.
"""

from __future__ import annotations

import errno

WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # errors of writing, never of reading
MAX_MESSAGE = 2000  # characters of an error message; past that it quotes an input whole


class DeltaimgError(Exception):
    """Base of all user-facing errors; ``exit_code`` is what the CLI exits with. A message that
    quotes an input at length (a 15 MiB name in a manifest) keeps its first and last characters,
    ``MAX_MESSAGE`` in all, and says how many were left out between them: one error stays one
    readable line, and its end, which says what to do, stays in it."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if len(text) > MAX_MESSAGE:
            head, tail = MAX_MESSAGE * 3 // 4, MAX_MESSAGE // 4
            text = f"{text[:head]} ... ({len(text) - head - tail} characters left out) ... {text[-tail:]}"
        super().__init__(text, *args)


class UsageError(DeltaimgError):
    """The command line or an argument is wrong."""

    exit_code = 2


class ImageReadError(DeltaimgError):
    """An input image (archive, layout, engine image) is missing, malformed or ambiguous."""

    exit_code = 3


class KeyFileError(DeltaimgError):
    """A key file is missing, malformed, or has unsafe permissions."""

    exit_code = 4


class BundleFormatError(DeltaimgError):
    """The bundle file is not a deltaimg bundle, is truncated, or is of an unknown version."""

    exit_code = 10


class SignatureError(DeltaimgError):
    """The bundle is unsigned, signed by an untrusted key, or its signature does not match."""

    exit_code = 11


class IntegrityError(DeltaimgError):
    """A payload or a rebuilt layer does not hash to what the signed manifest says."""

    exit_code = 12


class BaseMismatchError(DeltaimgError):
    """The base image given (or found in the engine) is not the one the bundle was made against."""

    exit_code = 13


class BaseMissingError(DeltaimgError):
    """The engine does not have the image the bundle updates."""

    exit_code = 15


class OutputError(DeltaimgError):
    """The output cannot be written (exists, no permission, no space)."""

    exit_code = 14


class EngineError(DeltaimgError):
    """The container engine cannot be reached or refused an operation. ``reason`` is the
    engine's own one-line answer, for a caller that words the message itself."""

    exit_code = 20

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class SwapFailedRolledBack(DeltaimgError):
    """The new containers failed; the old ones were restored and run again."""

    exit_code = 21


class SwapFailedNotRolledBack(DeltaimgError):
    """The swap failed and the rollback failed too: a human must look."""

    exit_code = 22


class BundlePartError(DeltaimgError):
    """A part of a split bundle is missing, of the wrong size, out of order or from another bundle."""

    exit_code = 16


class RunLockedError(DeltaimgError):
    """Another deltaimg run holds the state directory's lock."""

    exit_code = 23


class DiskSpaceError(DeltaimgError):
    """Too little free space where the rebuild or the engine will write; nothing was started."""

    exit_code = 24


class DowngradeError(DeltaimgError):
    """The bundle's target is older than what it would replace, and --allow-downgrade was not given."""

    exit_code = 25


class PartialChainError(DeltaimgError):
    """What could be applied was; a later bundle for the same image cannot be reached (a missing link)."""

    exit_code = 26


class RecoveryError(DeltaimgError):
    """An interrupted run left containers that could not be put back in order: a human must look."""

    exit_code = 27


class DependentsError(DeltaimgError):
    """A container that cannot be recreated (it runs with --rm) depends on one the update recreates
    (its network, IPC or PID namespace, a link, its volumes); nothing was changed."""

    exit_code = 28


class JournalError(DeltaimgError):
    """The journal holds a line deltaimg did not write: what earlier runs did cannot be known from it."""

    exit_code = 29


class ComposeError(DeltaimgError):
    """A Compose project's containers cannot be recreated by compose as the update needs (a pinned
    tag, a changed compose file, no compose program, a plain container depending on one), or a
    compose command failed."""

    exit_code = 30


class RegistryError(DeltaimgError):
    """A registry cannot be reached, refused the credentials or a push, or lacks the base image."""

    exit_code = 31


class SwarmError(DeltaimgError):
    """A Swarm service's rolling update onto the target failed (rolled back or paused) or did not converge in time."""

    exit_code = 32


def printable(message: object) -> str:
    """``message`` as one line of printable text. An error may quote what an input holds (a name in
    an archive's manifest.json, a key id): newlines and terminal escapes in it are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
