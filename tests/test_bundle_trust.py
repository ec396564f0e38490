"""A bundle is refused, before any output is written, unless a trusted key signed exactly its bytes."""

from __future__ import annotations

import os
import shutil

import pytest

from deltaimg.bundle import open_bundle, read_header
from deltaimg.errors import BundleFormatError, IntegrityError, SignatureError
from deltaimg.signing import load_public
from tests.conftest import run_cli

SIGNATURE_EXIT, FORMAT_EXIT, INTEGRITY_EXIT = SignatureError.exit_code, BundleFormatError.exit_code, IntegrityError.exit_code


def tampered(bundle: str, tmp_path, edit) -> str:
    path = str(tmp_path / "tampered.dimg")
    data = bytearray(open(bundle, "rb").read())
    data = edit(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


def regions(bundle: str) -> dict[str, int]:
    manifest, _, payload_start, size = read_header(bundle)
    return {"magic": 2, "version": 10, "manifest": 20 + len(manifest) // 2, "signature": 16 + len(manifest) + 60,
            "first payload": payload_start + 5, "last byte": size - 1}


def flip(at: int):
    def edit(data: bytearray) -> bytearray:
        data[at] ^= 0x01
        return data
    return edit


def test_verify_accepts_the_untouched_bundle(example_bundle, keypair):
    bundle = open_bundle(example_bundle, [load_public(keypair[1])])
    assert bundle.signer.key_id == load_public(keypair[1]).key_id


@pytest.mark.parametrize("region", ["magic", "version", "manifest", "signature", "first payload", "last byte"])
def test_one_flipped_byte_anywhere_is_refused_with_no_output(example_bundle, example_pair, keypair, tmp_path, region):
    path = tampered(example_bundle, tmp_path, flip(regions(example_bundle)[region]))
    out = tmp_path / "out.tar"
    result = run_cli("apply", path, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out))
    assert result.returncode in (SIGNATURE_EXIT, FORMAT_EXIT, INTEGRITY_EXIT), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists() and os.listdir(tmp_path) == ["tampered.dimg"]


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncation_at_any_point_is_refused(example_bundle, keypair, tmp_path, fraction):
    size = os.path.getsize(example_bundle)
    path = tampered(example_bundle, tmp_path, lambda d: d[: int(size * fraction)])
    result = run_cli("verify", path, "--trust", keypair[1])
    assert result.returncode in (FORMAT_EXIT, SIGNATURE_EXIT), result.stderr
    assert "Traceback" not in result.stderr


def test_appended_junk_is_refused(example_bundle, keypair, tmp_path):
    path = tampered(example_bundle, tmp_path, lambda d: d + b"junk")
    result = run_cli("verify", path, "--trust", keypair[1])
    assert result.returncode == FORMAT_EXIT and "appended" in result.stderr


def test_an_untrusted_signer_is_refused(example_bundle, other_keypair):
    result = run_cli("verify", example_bundle, "--trust", other_keypair[1])
    assert result.returncode == SIGNATURE_EXIT and "not trusted" in result.stderr


def test_a_stripped_signature_is_refused(example_bundle, keypair, tmp_path):
    manifest, _, payload_start, _ = read_header(example_bundle)
    sig_at = 16 + len(manifest)

    def strip(data: bytearray) -> bytearray:
        return data[:sig_at] + bytearray(4) + data[payload_start:]

    result = run_cli("verify", tampered(example_bundle, tmp_path, strip), "--trust", keypair[1])
    assert result.returncode == SIGNATURE_EXIT and "no Ed25519 signature" in result.stderr


def test_a_bundle_resigned_by_another_key_is_refused(example_bundle, keypair, other_keypair, tmp_path):
    from deltaimg import bundle as bundle_format, signing

    manifest, _, payload_start, _ = read_header(example_bundle)
    forged_sig = bundle_format.canonical_json(signing.sign(signing.load_private(other_keypair[0]), manifest))

    def resign(data: bytearray) -> bytearray:
        return data[: 16 + len(manifest)] + bundle_format.U32.pack(len(forged_sig)) + forged_sig + data[payload_start:]

    result = run_cli("verify", tampered(example_bundle, tmp_path, resign), "--trust", keypair[1])
    assert result.returncode == SIGNATURE_EXIT


def test_not_a_bundle_at_all(tmp_path, keypair):
    path = tmp_path / "random.dimg"
    path.write_bytes(os.urandom(3000))
    result = run_cli("verify", str(path), "--trust", keypair[1])
    assert result.returncode == FORMAT_EXIT and "not a deltaimg bundle" in result.stderr


def test_several_trusted_keys_one_of_which_signed(example_bundle, keypair, other_keypair, tmp_path):
    trust_dir = tmp_path / "trusted.d"
    trust_dir.mkdir()
    shutil.copy(other_keypair[1], trust_dir / "other.pub")
    shutil.copy(keypair[1], trust_dir / "release.pub")
    result = run_cli("verify", example_bundle, "--trust-dir", str(trust_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert '"valid": true' in result.stdout
