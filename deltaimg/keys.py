"""Which keys a command uses: --key for signing, --trust files and the trust directory for checking."""

from __future__ import annotations

import os

from deltaimg import signing
from deltaimg.errors import KeyFileError

DEFAULT_TRUST_DIR = "/etc/deltaimg/trusted.d"
PASSPHRASE_ENV = "DELTAIMG_KEY_PASSPHRASE"


def passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def signing_key(path: str):
    return signing.load_private(path, passphrase())


def trusted_keys(files: list[str], trust_dir: str | None) -> list[signing.TrustedKey]:
    """Keys named with --trust, plus every ``*.pub`` in the trust directory."""
    keys = [signing.load_public(path) for path in files]
    directory = trust_dir if trust_dir is not None else (DEFAULT_TRUST_DIR if not files else None)
    if directory:
        if not os.path.isdir(directory):
            if trust_dir is not None:
                raise KeyFileError(f"trust directory {directory} does not exist")
            return keys
        for name in sorted(os.listdir(directory)):
            if name.endswith(".pub"):
                keys.append(signing.load_public(os.path.join(directory, name)))
    return keys
