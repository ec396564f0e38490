"""Ed25519 keys and signatures over a bundle's manifest.

Private keys are PKCS#8 PEM (optionally passphrase-protected) or OpenSSH; they must not be
readable by group or others. Public keys are PEM (SubjectPublicKeyInfo, so ``openssl`` can check
a signature without deltaimg) or one OpenSSH line (``ssh-ed25519 AAAA… comment``). A key id is
the first 16 hex digits of the sha256 of the raw 32-byte public key, whatever the file format.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from deltaimg.errors import KeyFileError, OutputError, SignatureError

SIGNED_PREFIX = b"deltaimg-bundle-v1\0"  # domain separation: a signature means "this bundle"
MAX_KEY_FILE = 64 * 1024
KEY_ID_CHARS = frozenset("0123456789abcdef")


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    source: str


def generate(path: str, passphrase: bytes | None = None, force: bool = False) -> str:
    """Write ``path`` (private, mode 0600) and ``path.pub``; return the key id.

    Neither file is written through a symlink planted at its name.
    """
    for target in (path, path + ".pub"):
        if os.path.lexists(target) and not force:
            raise OutputError(f"{target} exists; choose another name or pass --force")
    private = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(path + ".pub", public_pem, public_file_mode(), force)
    try:
        _write_new(path, pem, 0o600, force)
    except OutputError:
        if not force:
            os.unlink(path + ".pub")
        raise
    return key_id(private.public_key())


def _write_new(path: str, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` with exactly ``mode``. O_EXCL fails on any existing name, a dangling symlink
    included, so nothing is written through a link; --force removes the name (never its target)."""
    try:
        if force and os.path.lexists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask
            f.write(data)
    except FileExistsError:
        raise OutputError(f"{path} exists; choose another name or pass --force") from None
    except OSError as exc:
        raise OutputError(f"cannot write key {path}: {exc.strerror}") from None


def public_file_mode() -> int:
    """0644 less the process's umask: what a plain ``open`` would give a file anyone may read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


def read_protected_file(path: str, what: str) -> bytes:
    """A regular file of at most MAX_KEY_FILE bytes that neither group nor others can read or write
    (a private key, a passphrase file)."""
    data, info = _read_regular_file(path, what)
    mode = info.st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is open to group or others (mode {oct(mode & 0o777)}); run: chmod 600 {path}")
    return data


def _read_regular_file(path: str, what: str) -> tuple[bytes, os.stat_result]:
    """(content, status) of a regular file; a FIFO or device is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path} is not a regular file; give the {what} file")
            if info.st_size > MAX_KEY_FILE:
                raise KeyFileError(f"{path}: {info.st_size} bytes is too large for a {what} file")
            return f.read(MAX_KEY_FILE + 1), info
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_private(path: str, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    data = read_protected_file(path, "private key")
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, passphrase)
        else:
            key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:  # the key's protection and the passphrase given do not go together
        if passphrase is None:
            raise KeyFileError(f"{path} is protected by a passphrase; give it with --passphrase-file FILE "
                               "(or $DELTAIMG_KEY_PASSPHRASE)") from None
        raise KeyFileError(f"{path} is not protected by a passphrase, but one was given; give none") from None
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"{path} cannot be decrypted here ({exc}); for a passphrase-protected OpenSSH "
                           "key install the Python package bcrypt") from None
    except ValueError as exc:
        if passphrase is not None:
            raise KeyFileError(f"{path}: wrong passphrase, or the key file is damaged") from None
        raise KeyFileError(f"{path} is not a usable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key; create one with: deltaimg keygen NAME")
    return key


def refuse_if_others_can_write(path: str, info: os.stat_result, what: str) -> None:
    """As ssh's StrictModes: what decides trust (a trusted key, the trust directory) must be owned
    by root or by the user running deltaimg, and writable by no one else."""
    if info.st_uid not in (0, os.geteuid()):
        raise KeyFileError(f"{what} {path} is owned by uid {info.st_uid}, neither root nor you, so its owner decides "
                           f"which bundles are trusted; run: chown root {path}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(f"{what} {path} is writable by group or others (mode {oct(info.st_mode & 0o7777)}), so they "
                           f"decide which bundles are trusted; run: chmod go-w {path}")


def load_public(path: str) -> TrustedKey:
    content, info = _read_regular_file(path, "public key")
    refuse_if_others_can_write(path, info, "trusted key")
    data = content.strip()
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} is a private key; trust the public one ({path}.pub)")
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:  # one OpenSSH line: "ssh-ed25519 AAAA... comment"
            key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a usable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return TrustedKey(key_id(key), key, path)


def sign(private: Ed25519PrivateKey, manifest: bytes) -> dict:
    return {
        "algorithm": "ed25519",
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(SIGNED_PREFIX + manifest)).decode(),
    }


def verify(signature: object, manifest: bytes, trusted: list[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``manifest``; SignatureError otherwise.

    ``signature`` is the bundle's signature block as parsed (None when absent or unreadable). Its
    key id only picks which trusted keys to try: nothing in it is believed, or shown unchecked.
    """
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise SignatureError("the bundle carries no readable Ed25519 signature (unsigned or damaged); "
                             "it cannot be trusted")
    if not trusted:
        raise SignatureError("no trusted key given; pass --trust KEY.pub or put it in the trust directory")
    wanted = signature.get("key_id")
    shown = wanted if isinstance(wanted, str) and len(wanted) == 16 and set(wanted) <= KEY_ID_CHARS else "(invalid id)"
    candidates = [k for k in trusted if k.key_id == wanted]
    if not candidates:
        known = ", ".join(sorted({k.key_id for k in trusted}))
        raise SignatureError(f"the bundle is signed by key {shown}, which is not trusted here (trusted: {known})")
    try:
        raw = base64.b64decode(str(signature.get("signature", "")), validate=True)
    except ValueError:
        raw = b""
    message = SIGNED_PREFIX + manifest
    for key in candidates:  # ids are 64 bits: two trusted keys could share one
        try:
            key.public.verify(raw, message)
            return key
        except InvalidSignature:
            continue
    raise SignatureError(f"the bundle's signature by key {shown} does not match its contents: it was altered")
