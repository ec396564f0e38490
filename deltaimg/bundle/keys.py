"""Which keys a command uses: --key for signing, --trust files and the trust directory for checking.

A passphrase is never taken from the command line (other users see it in ``ps``): it comes from
``--passphrase-file FILE`` (its first line; the file must be private, like a key) or, failing
that, from ``$DELTAIMG_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deltaimg.bundle import signing
from deltaimg.errors import KeyFileError

DEFAULT_TRUST_DIR = "/etc/deltaimg/trusted.d"
PASSPHRASE_ENV = "DELTAIMG_KEY_PASSPHRASE"


def passphrase(passphrase_file: str | None = None) -> bytes | None:
    """The passphrase from ``passphrase_file`` if given, else from the environment, else None."""
    if passphrase_file is not None:
        lines = signing.read_protected_file(passphrase_file, "passphrase").splitlines()
        if not lines or not lines[0]:
            raise KeyFileError(f"{passphrase_file} is empty; its first line is the passphrase")
        return lines[0]
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def signing_key(path: str, passphrase_file: str | None = None) -> Ed25519PrivateKey:
    return signing.load_private(path, passphrase(passphrase_file))


def trusted_keys(files: list[str], trust_dir: str | None) -> list[signing.TrustedKey]:
    """Keys named with --trust, plus every ``*.pub`` in the trust directory.

    The trust directory is ``trust_dir`` if given (it must exist), else the default one when no
    --trust is given (it may be missing: then nothing is trusted and every bundle is refused).
    A file there that is not a usable public key is an error, not skipped: a host's trust must
    not depend on which files happen to parse.
    """
    keys = [signing.load_public(path) for path in files]
    directory = trust_dir if trust_dir is not None else (DEFAULT_TRUST_DIR if not files else None)
    if directory:
        if not os.path.isdir(directory):
            if trust_dir is not None:
                raise KeyFileError(f"trust directory {directory} does not exist")
            return keys
        try:
            signing.refuse_if_others_can_write(directory, os.stat(directory), "trust directory")  # or anyone plants a key
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise KeyFileError(f"cannot read trust directory {directory}: {exc.strerror}") from None
        for name in names:
            if name.endswith(".pub"):
                keys.append(signing.load_public(os.path.join(directory, name)))
    return keys
