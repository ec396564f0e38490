"""Keys: several trusted keys, a trust directory, key ids, private keys that stay private,
passphrases that never appear on a command line, and OpenSSH-format Ed25519 keys."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deltaimg.bundle import keys

from deltaimg.bundle import signing
from deltaimg.errors import KeyFileError, OutputError, SignatureError, UsageError
from tests import imagefactory as f
from tests.conftest import run_cli

KEY_EXIT, SIGNATURE_EXIT = KeyFileError.exit_code, SignatureError.exit_code
SSH_KEYGEN = shutil.which("ssh-keygen")


def need_ssh_keygen() -> str:
    """ssh-keygen (openssh-client) is part of the test environment: missing, the test fails under
    CI=true and skips elsewhere."""
    if SSH_KEYGEN is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but ssh-keygen is not installed (apt-get install openssh-client)", pytrace=False)
        pytest.skip("ssh-keygen is not installed")
    return SSH_KEYGEN


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """A tiny image pair: make of it takes a fraction of a second."""
    tmp = tmp_path_factory.mktemp("keys-pair")
    v1 = f.write_layer(tmp / "v1.layer", f.complete_tree([f.file("etc/version", b"1\n"), f.file("srv/app", b"app " * 500)]))
    v2 = f.write_layer(tmp / "v2.layer", f.complete_tree([f.file("etc/version", b"2\n"), f.file("srv/app", b"app " * 501)]))
    old = f.write_docker_archive(tmp / "v1.tar", [f.ImageSpec([v1], ["keys/app:1"])])[0].path
    new = f.write_docker_archive(tmp / "v2.tar", [f.ImageSpec([v2], ["keys/app:2"])])[0].path
    return str(old), str(new)


def keygen(path: Path, *extra: str) -> str:
    """``deltaimg keygen``; returns the key id it prints."""
    result = run_cli("keygen", str(path), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.rsplit("key id ", 1)[1].strip()


def make(pair: tuple[str, str], key: Path | str, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("make", *pair, "-o", str(out), "--key", str(key), "--quiet", *extra, env=env)


def signed_bundle(pair: tuple[str, str], key: Path | str, tmp_path: Path, *extra: str, env: dict | None = None) -> str:
    out = tmp_path / f"{Path(key).name}.dimg"
    result = make(pair, key, out, *extra, env=env)
    assert result.returncode == 0, result.stderr
    return str(out)


def private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, reason: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("deltaimg: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr, result.stderr


# --------------------------------------------------------------------------- several trusted keys


def test_a_bundle_verifies_against_any_one_of_several_trusted_keys(pair, tmp_path):
    ids = {name: keygen(tmp_path / name) for name in ("old", "new", "stranger")}
    bundle = signed_bundle(pair, tmp_path / "new", tmp_path)
    result = run_cli("verify", bundle, "--trust", str(tmp_path / "old.pub"), "--trust", str(tmp_path / "new.pub"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key_id"] == ids["new"]
    refused = run_cli("verify", bundle, "--trust", str(tmp_path / "old.pub"), "--trust", str(tmp_path / "stranger.pub"))
    assert_one_line_error(refused, SIGNATURE_EXIT, f"signed by key {ids['new']}, which is not trusted here")
    assert ids["old"] in refused.stderr and ids["stranger"] in refused.stderr


def test_the_trust_directory_holds_every_pub_file_and_nothing_else(pair, tmp_path):
    trust = tmp_path / "trusted.d"
    trust.mkdir()
    keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    keygen(tmp_path / "other")
    shutil.copy(tmp_path / "other.pub", trust / "other.pub")
    shutil.copy(tmp_path / "release.pub", trust / "release.pub.disabled")  # not *.pub: not trusted
    (trust / "README").write_text("not a key")
    assert_one_line_error(run_cli("verify", bundle, "--trust-dir", str(trust)), SIGNATURE_EXIT, "not trusted here")
    shutil.copy(tmp_path / "release.pub", trust / "release.pub")
    assert run_cli("verify", bundle, "--trust-dir", str(trust)).returncode == 0


def test_a_file_in_the_trust_directory_that_is_no_public_key_fails_closed(pair, tmp_path):
    trust = tmp_path / "trusted.d"
    trust.mkdir()
    keygen(tmp_path / "release")
    shutil.copy(tmp_path / "release.pub", trust / "release.pub")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    (trust / "broken.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    assert_one_line_error(run_cli("verify", bundle, "--trust-dir", str(trust)), KEY_EXIT, "broken.pub is not a usable public key")


def test_a_missing_or_empty_trust_directory_trusts_nothing(pair, tmp_path):
    keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    assert_one_line_error(run_cli("verify", bundle, "--trust-dir", str(tmp_path / "nowhere")), KEY_EXIT, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("verify", bundle, "--trust-dir", str(tmp_path / "empty")), SIGNATURE_EXIT, "no trusted key")


def test_the_default_trust_directory_is_read_only_when_no_key_is_named(tmp_path, monkeypatch):
    default = tmp_path / "etc-deltaimg-trusted.d"
    default.mkdir()
    signing.generate(str(tmp_path / "a"))
    signing.generate(str(tmp_path / "b"))
    shutil.copy(tmp_path / "a.pub", default / "a.pub")
    monkeypatch.setattr(keys, "DEFAULT_TRUST_DIR", str(default))
    a, b = signing.load_public(str(tmp_path / "a.pub")).key_id, signing.load_public(str(tmp_path / "b.pub")).key_id
    assert [k.key_id for k in keys.trusted_keys([], None)] == [a]
    assert [k.key_id for k in keys.trusted_keys([str(tmp_path / "b.pub")], None)] == [b]
    assert [k.key_id for k in keys.trusted_keys([str(tmp_path / "b.pub")], str(default))] == [b, a]
    monkeypatch.setattr(keys, "DEFAULT_TRUST_DIR", str(tmp_path / "absent"))
    assert keys.trusted_keys([], None) == []


# --------------------------------------------------------------------------- key ids


def test_inspect_and_verify_show_the_id_keygen_printed(pair, tmp_path):
    key_id = keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    unverified = run_cli("inspect", bundle)
    assert f"signed by key {key_id}" in unverified.stdout and "NOT verified" in unverified.stdout
    verified = json.loads(run_cli("inspect", bundle, "--trust", str(tmp_path / "release.pub"), "--json").stdout)
    assert verified["signer_key_id"] == key_id and verified["verified"] is True
    assert f"signed by key {key_id}" in run_cli("verify", bundle, "--trust", str(tmp_path / "release.pub")).stdout


# --------------------------------------------------------------------------- private keys stay private


def test_keygen_writes_the_private_key_0600_and_the_public_key_readable(tmp_path):
    umask = os.umask(0o022)  # what keygen, a child process, starts with
    try:
        keygen(tmp_path / "k")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k.pub").st_mode) == 0o644
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644])
def test_a_private_key_others_can_read_or_write_is_refused(pair, tmp_path, mode):
    keygen(tmp_path / "k")
    os.chmod(tmp_path / "k", mode)
    result = make(pair, tmp_path / "k", tmp_path / "out.dimg")
    assert_one_line_error(result, KEY_EXIT, f"chmod 600 {tmp_path / 'k'}")
    assert not (tmp_path / "out.dimg").exists()


@pytest.mark.parametrize("planted", ["k", "k.pub"])
def test_keygen_never_writes_through_a_symlink_planted_at_its_output(tmp_path, planted):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / planted).symlink_to(elsewhere / "target")
    refused = run_cli("keygen", str(tmp_path / "k"))
    assert_one_line_error(refused, OutputError.exit_code, "exists")
    assert os.listdir(elsewhere) == [] and sorted(os.listdir(tmp_path)) == sorted(["elsewhere", planted])
    forced = run_cli("keygen", str(tmp_path / "k"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert os.listdir(elsewhere) == []  # the link itself was replaced
    assert not (tmp_path / planted).is_symlink() and (tmp_path / planted).is_file()


def test_keygen_keeps_an_existing_key_and_writes_no_half_pair(tmp_path):
    (tmp_path / "k.pub").write_text("keep me")
    assert_one_line_error(run_cli("keygen", str(tmp_path / "k")), OutputError.exit_code, "k.pub exists")
    assert (tmp_path / "k.pub").read_text() == "keep me" and not (tmp_path / "k").exists()


def test_a_key_path_that_is_a_fifo_is_refused_without_blocking(pair, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    result = subprocess.run([sys.executable, "-m", "deltaimg", "make", *pair, "-o", str(tmp_path / "x.dimg"),
                             "--key", str(tmp_path / "fifo")], capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, KEY_EXIT, "not a regular file")
    trusted = subprocess.run([sys.executable, "-m", "deltaimg", "verify", str(tmp_path / "x.dimg"),
                              "--trust", str(tmp_path / "fifo")], capture_output=True, text=True, timeout=60)
    assert_one_line_error(trusted, KEY_EXIT, "not a regular file")


# --------------------------------------------------------------------------- passphrases


def test_a_passphrase_protected_key_from_a_passphrase_file(pair, tmp_path):
    secret = private_file(tmp_path / "passphrase", b"correct horse battery staple\n")
    key_id = keygen(tmp_path / "k", "--passphrase-file", str(secret))
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k").read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    bundle = signed_bundle(pair, tmp_path / "k", tmp_path, "--passphrase-file", str(secret))
    verified = run_cli("verify", bundle, "--trust", str(tmp_path / "k.pub"), "--json")
    assert json.loads(verified.stdout)["key_id"] == key_id

    missing = make(pair, tmp_path / "k", tmp_path / "no.dimg")
    assert_one_line_error(missing, KEY_EXIT, "is protected by a passphrase; give it with --passphrase-file")
    wrong = private_file(tmp_path / "wrong", b"incorrect horse\n")
    assert_one_line_error(make(pair, tmp_path / "k", tmp_path / "no.dimg", "--passphrase-file", str(wrong)),
                          KEY_EXIT, "wrong passphrase")
    from_env = make(pair, tmp_path / "k", tmp_path / "env.dimg", env={keys.PASSPHRASE_ENV: "correct horse battery staple"})
    assert from_env.returncode == 0, from_env.stderr
    assert not (tmp_path / "no.dimg").exists()


def test_a_passphrase_file_others_can_read_or_that_is_empty_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.write_bytes(b"secret\n")
    os.chmod(loose, 0o644)
    assert_one_line_error(run_cli("keygen", str(tmp_path / "k"), "--passphrase-file", str(loose)), KEY_EXIT, "chmod 600")
    empty = private_file(tmp_path / "empty", b"\n")
    assert_one_line_error(run_cli("keygen", str(tmp_path / "k"), "--passphrase-file", str(empty)), KEY_EXIT, "is empty")
    assert not (tmp_path / "k").exists() and not (tmp_path / "k.pub").exists()


def test_a_passphrase_given_for_an_unprotected_key_is_refused(pair, tmp_path):
    keygen(tmp_path / "k")
    secret = private_file(tmp_path / "passphrase", b"secret\n")
    assert_one_line_error(make(pair, tmp_path / "k", tmp_path / "x.dimg", "--passphrase-file", str(secret)),
                          KEY_EXIT, "not protected by a passphrase")


def test_there_is_no_way_to_pass_a_passphrase_on_the_command_line(tmp_path):
    for command in ("keygen", "make"):
        assert "--passphrase-file" in run_cli(command, "--help").stdout
    result = run_cli("keygen", str(tmp_path / "k"), "--passphrase", "secret")
    assert result.returncode == UsageError.exit_code and not (tmp_path / "k").exists()


# --------------------------------------------------------------------------- OpenSSH keys


def openssh_pair_by_cryptography(path: Path, comment: bytes = b"") -> None:
    private = Ed25519PrivateKey.generate()
    private_file(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (path.parent / (path.name + ".pub")).write_bytes(line + (b" " + comment if comment else b"") + b"\n")


def openssh_pair_by_ssh_keygen(path: Path, passphrase: str = "") -> None:
    subprocess.run([need_ssh_keygen(), "-q", "-t", "ed25519", "-N", passphrase, "-C", "release@build-host", "-f", str(path)],
                   check=True, capture_output=True)


GENERATORS = {"cryptography": lambda p: openssh_pair_by_cryptography(p, b"release@build-host"),
              "ssh-keygen": openssh_pair_by_ssh_keygen}


@pytest.mark.parametrize("generator", GENERATORS)
def test_openssh_ed25519_keys_sign_and_verify(pair, tmp_path, generator):
    GENERATORS[generator](tmp_path / "id_ed25519")
    assert (tmp_path / "id_ed25519").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (tmp_path / "id_ed25519.pub").read_bytes().startswith(b"ssh-ed25519 AAAA")
    bundle = signed_bundle(pair, tmp_path / "id_ed25519", tmp_path)
    result = run_cli("verify", bundle, "--trust", str(tmp_path / "id_ed25519.pub"), "--json")
    assert result.returncode == 0, result.stderr
    trust = tmp_path / "trusted.d"
    trust.mkdir()
    shutil.copy(tmp_path / "id_ed25519.pub", trust / "release.pub")
    assert run_cli("verify", bundle, "--trust-dir", str(trust)).returncode == 0
    expected = signing.key_id(signing.load_private(str(tmp_path / "id_ed25519")).public_key())
    assert json.loads(result.stdout)["key_id"] == expected


def test_a_key_has_the_same_id_in_pem_and_openssh_form(tmp_path):
    openssh_pair_by_cryptography(tmp_path / "ssh")
    private = signing.load_private(str(tmp_path / "ssh"))
    (tmp_path / "pem.pub").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert signing.load_public(str(tmp_path / "ssh.pub")).key_id == signing.load_public(str(tmp_path / "pem.pub")).key_id


def test_a_passphrase_protected_openssh_key(pair, tmp_path):
    """bcrypt is in the test extras: cryptography needs it to decrypt an OpenSSH key."""
    openssh_pair_by_ssh_keygen(tmp_path / "id_ed25519", passphrase="secret phrase")
    secret = private_file(tmp_path / "passphrase", b"secret phrase\n")
    bundle = signed_bundle(pair, tmp_path / "id_ed25519", tmp_path, "--passphrase-file", str(secret))
    result = run_cli("verify", bundle, "--trust", str(tmp_path / "id_ed25519.pub"))
    assert result.returncode == 0, result.stderr
    assert_one_line_error(make(pair, tmp_path / "id_ed25519", tmp_path / "y.dimg"), KEY_EXIT, "protected by a passphrase")


def test_a_passphrase_protected_openssh_key_without_bcrypt_says_to_install_it(pair, tmp_path):
    openssh_pair_by_ssh_keygen(tmp_path / "id_ed25519", passphrase="secret phrase")
    secret = private_file(tmp_path / "passphrase", b"secret phrase\n")
    shim = tmp_path / "no-bcrypt"
    shim.mkdir()
    (shim / "bcrypt.py").write_text('raise ImportError("bcrypt hidden by the test")\n')
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    result = make(pair, tmp_path / "id_ed25519", tmp_path / "x.dimg", "--passphrase-file", str(secret),
                  env={"PYTHONPATH": path})
    assert_one_line_error(result, KEY_EXIT, "for a passphrase-protected OpenSSH key install the Python package bcrypt")
    assert not (tmp_path / "x.dimg").exists()


def test_openssh_keys_of_other_kinds_are_refused(pair, tmp_path):
    subprocess.run([need_ssh_keygen(), "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "id_ecdsa")], check=True)
    assert_one_line_error(make(pair, tmp_path / "id_ecdsa", tmp_path / "x.dimg"), KEY_EXIT, "not an Ed25519 key")
    assert_one_line_error(run_cli("verify", str(tmp_path / "x.dimg"), "--trust", str(tmp_path / "id_ecdsa.pub")),
                          KEY_EXIT, "not an Ed25519 public key")


def test_a_private_key_given_as_trusted_is_refused(tmp_path):
    keygen(tmp_path / "k")
    result = run_cli("verify", str(tmp_path / "k"), "--trust", str(tmp_path / "k"))
    assert_one_line_error(result, KEY_EXIT, "is a private key; trust the public one")


# --------------------------------------------------------------------------- who may write what decides trust


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_a_trusted_key_others_can_write_is_refused_like_ssh_does(pair, tmp_path, mode):
    keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    public = tmp_path / "release.pub"
    public.chmod(mode)
    result = run_cli("verify", bundle, "--trust", str(public))
    assert (result.returncode, result.stdout) == (KEY_EXIT, "")
    assert result.stderr == (f"deltaimg: error: trusted key {public} is writable by group or others (mode {oct(mode)}), "
                             f"so they decide which bundles are trusted; run: chmod go-w {public}\n")
    public.chmod(0o644)
    assert run_cli("verify", bundle, "--trust", str(public)).returncode == 0  # the control


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_trust_directory_others_can_write_is_refused_even_sticky(pair, tmp_path, mode):
    """Anyone who can create a file there can plant a *.pub, sticky bit or not."""
    trust = tmp_path / "trusted.d"
    trust.mkdir()
    keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    shutil.copy(tmp_path / "release.pub", trust / "release.pub")
    trust.chmod(mode)
    result = run_cli("verify", bundle, "--trust-dir", str(trust))
    assert (result.returncode, result.stdout) == (KEY_EXIT, "")
    assert result.stderr == (f"deltaimg: error: trust directory {trust} is writable by group or others "
                             f"(mode {oct(mode)}), so they decide which bundles are trusted; run: chmod go-w {trust}\n")
    trust.chmod(0o755)
    assert run_cli("verify", bundle, "--trust-dir", str(trust)).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_trusted_key_or_trust_directory_owned_by_another_user_is_refused(pair, tmp_path):
    trust = tmp_path / "trusted.d"
    trust.mkdir()
    keygen(tmp_path / "release")
    bundle = signed_bundle(pair, tmp_path / "release", tmp_path)
    shutil.copy(tmp_path / "release.pub", trust / "release.pub")
    os.chown(trust / "release.pub", 4242, 4242)
    result = run_cli("verify", bundle, "--trust-dir", str(trust))
    assert (result.returncode, result.stderr) == (KEY_EXIT, (
        f"deltaimg: error: trusted key {trust / 'release.pub'} is owned by uid 4242, neither root nor you, so its owner "
        f"decides which bundles are trusted; run: chown root {trust / 'release.pub'}\n"))
    os.chown(trust / "release.pub", 0, 0)
    os.chown(trust, 4242, 4242)
    result = run_cli("verify", bundle, "--trust-dir", str(trust))
    assert (result.returncode, result.stderr) == (KEY_EXIT, (
        f"deltaimg: error: trust directory {trust} is owned by uid 4242, neither root nor you, so its owner "
        f"decides which bundles are trusted; run: chown root {trust}\n"))
