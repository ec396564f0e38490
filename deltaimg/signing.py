"""Ed25519 keys and signatures over a bundle's manifest.

Private keys are PKCS#8 PEM (optionally passphrase-protected) or OpenSSH; they must not be
readable by group or others. Public keys are PEM (SubjectPublicKeyInfo, so ``openssl`` can check
a signature without deltaimg) or one OpenSSH line. A key id is the first 16 hex digits of the
sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from deltaimg.errors import KeyFileError, OutputError, SignatureError

SIGNED_PREFIX = b"deltaimg-bundle-v1\0"  # domain separation: a signature means "this bundle"
MAX_KEY_FILE = 64 * 1024


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    source: str


def generate(path: str, passphrase: bytes | None = None, force: bool = False) -> str:
    """Write ``path`` (private, mode 0600) and ``path.pub``; return the key id."""
    for target in (path, path + ".pub"):
        if os.path.exists(target) and not force:
            raise OutputError(f"{target} exists; choose another name or pass --force")
    private = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        if os.path.exists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with open(path + ".pub", "wb") as f:
            f.write(public_pem)
    except OSError as exc:
        raise OutputError(f"cannot write key {path}: {exc.strerror}") from None
    return key_id(private.public_key())


def _read_key_file(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_KEY_FILE:
            raise KeyFileError(f"{path}: {size} bytes is too large for a key file")
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from None


def load_private(path: str, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    data = _read_key_file(path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {oct(mode & 0o777)}); run: chmod 600 {path}")
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, passphrase)
        else:
            key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        raise KeyFileError(f"{path} is protected by a passphrase; set DELTAIMG_KEY_PASSPHRASE") from None
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a usable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key; create one with: deltaimg keygen NAME")
    return key


def load_public(path: str) -> TrustedKey:
    data = _read_key_file(path).strip()
    try:
        if data.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data)
        elif b"PRIVATE KEY" in data:
            raise KeyFileError(f"{path} is a private key; trust the public one ({path}.pub)")
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, serialization.UnsupportedAlgorithm) as exc:
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
    """The trusted key that signed ``manifest``; SignatureError otherwise."""
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise SignatureError("the bundle carries no Ed25519 signature; refuse unsigned bundles")
    wanted = signature.get("key_id")
    if not trusted:
        raise SignatureError("no trusted key given; pass --trust KEY.pub")
    keys = [k for k in trusted if k.key_id == wanted]
    if not keys:
        known = ", ".join(k.key_id for k in trusted)
        raise SignatureError(f"the bundle is signed by key {wanted}, which is not trusted here (trusted: {known})")
    try:
        raw = base64.b64decode(str(signature.get("signature", "")), validate=True)
        keys[0].public.verify(raw, SIGNED_PREFIX + manifest)
    except (InvalidSignature, ValueError):
        raise SignatureError(f"the bundle's signature by key {wanted} does not match its contents: it was altered") from None
    return keys[0]
