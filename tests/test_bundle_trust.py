"""A bundle is refused, before any output is written or the engine is touched, unless a trusted key
signed exactly its bytes.

The tamper matrix: one flipped byte in each region (header fields, manifest, signature, each
payload, the last byte), truncation at every boundary, appended bytes, payloads swapped in from
another bundle (same size and not), another key's signature, a stripped signature. Every refusal
is one line on stderr with the exit code of what failed: 10 the framing (not a bundle, truncated,
bytes appended), 11 the signature (unsigned, untrusted, altered), 12 a payload.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives import serialization

from deltaimg.bundle import format as bundle_format
from deltaimg.bundle import signing
from deltaimg.bundle.reader import open_bundle, read_header
from deltaimg.errors import BundleFormatError, IntegrityError, SignatureError
from deltaimg.bundle.signing import load_public
from deltaimg.bundle.verify import verify_payloads
from tests.conftest import archive_image, run_cli

FORMAT, SIGNATURE, INTEGRITY = BundleFormatError.exit_code, SignatureError.exit_code, IntegrityError.exit_code


@dataclass(frozen=True)
class Regions:
    """Where everything is in a bundle file."""

    data: bytes
    manifest_len: int
    signature: bytes
    payload_start: int
    payloads: list[dict]

    @classmethod
    def of(cls, path: str) -> Regions:
        manifest, _, payload_start, _ = read_header(path)
        data = Path(path).read_bytes()
        signature = data[20 + len(manifest):payload_start]
        return cls(data, len(manifest), signature, payload_start, json.loads(bundle_format.manifest_json(manifest, path))["payloads"])

    @property
    def signature_at(self) -> int:
        return 16 + self.manifest_len  # the signature length field

    def payload_range(self, index: int) -> tuple[int, int]:
        start = self.payload_start + sum(record["size"] for record in self.payloads[:index % len(self.payloads)])
        return start, start + self.payloads[index]["size"]

    @property
    def key_id_at(self) -> int:
        return self.payload_start - len(self.signature)

    @property
    def signature_bytes_at(self) -> int:
        return self.key_id_at + bundle_format.KEY_ID_BYTES


Edit = Callable[[Regions], bytes]


def flip(offset: Callable[[Regions], int]) -> Edit:
    def edit(r: Regions) -> bytes:
        at = offset(r)
        return r.data[:at] + bytes([r.data[at] ^ 0x01]) + r.data[at + 1:]
    return edit


def cut(length: Callable[[Regions], int]) -> Edit:
    return lambda r: r.data[: length(r)]


def resigned(private_path: str, claim_key_id: str | None = None) -> Edit:
    """The same manifest and payloads with a signature by another key (optionally claiming an id)."""
    def edit(r: Regions) -> bytes:
        manifest = r.data[16:16 + r.manifest_len]
        signature = signing.sign(signing.load_private(private_path), manifest)
        if claim_key_id:
            signature["key_id"] = claim_key_id
        block = bundle_format.signature_block(signature)
        return r.data[: r.signature_at] + bundle_format.U32.pack(len(block)) + block + r.data[r.payload_start:]
    return edit


def with_signature_block(block: bytes) -> Edit:
    return lambda r: r.data[: r.signature_at] + bundle_format.U32.pack(len(block)) + block + r.data[r.payload_start:]


FLIPS: dict[str, tuple[Edit, int, str]] = {
    "magic": (flip(lambda r: 2), FORMAT, "not a deltaimg bundle"),
    "format version": (flip(lambda r: 10), FORMAT, "bundle format"),  # 2 -> 258 (2 -> 3 reads alike: 3 only adds a segment kind)
    "manifest length, low byte": (flip(lambda r: 15), FORMAT, "damaged"),
    "manifest length, high byte": (flip(lambda r: 12), FORMAT, "bad manifest length"),
    "manifest, first byte": (flip(lambda r: 16), SIGNATURE, "does not match its contents"),
    "manifest, middle": (flip(lambda r: 16 + r.manifest_len // 2), SIGNATURE, "does not match its contents"),
    "manifest, last byte": (flip(lambda r: 15 + r.manifest_len), SIGNATURE, "does not match its contents"),
    # 73: the signature block takes in the first payload byte (a recipe length), which is no zero padding
    "signature length, low byte": (flip(lambda r: r.signature_at + 3), SIGNATURE, "no readable Ed25519 signature"),
    "signature length, high byte": (flip(lambda r: r.signature_at), FORMAT, "bad signature length"),
    "signature key id": (flip(lambda r: r.key_id_at + 3), SIGNATURE, "not trusted here"),
    "signature bytes": (flip(lambda r: r.signature_bytes_at + 10), SIGNATURE, "does not match its contents"),
    "signature, last byte": (flip(lambda r: r.payload_start - 1), SIGNATURE, "does not match its contents"),
    "payload 0, first byte": (flip(lambda r: r.payload_range(0)[0]), INTEGRITY, "payload layer-0 does not match its signed sha256"),
    "payload 0, middle": (flip(lambda r: sum(r.payload_range(0)) // 2), INTEGRITY, "payload layer-0 does not match"),
    "payload 1, last byte": (flip(lambda r: r.payload_range(1)[1] - 1), INTEGRITY, "payload layer-1 does not match"),
    "config payload": (flip(lambda r: r.payload_range(-1)[0] + 3), INTEGRITY, "payload config does not match"),
    "the file's last byte": (flip(lambda r: len(r.data) - 1), INTEGRITY, "payload config does not match its signed sha256"),
}

CUTS: dict[str, Edit] = {
    "empty": cut(lambda r: 0),
    "in the magic": cut(lambda r: 5),
    "after the magic": cut(lambda r: 8),
    "in the header": cut(lambda r: 14),
    "after the header": cut(lambda r: 16),
    "in the manifest": cut(lambda r: 16 + r.manifest_len // 2),
    "after the manifest": cut(lambda r: 16 + r.manifest_len),
    "in the signature length": cut(lambda r: r.signature_at + 2),
    "in the signature": cut(lambda r: r.signature_at + 4 + len(r.signature) // 2),
    "before the payloads": cut(lambda r: r.payload_start),
    "in payload 0": cut(lambda r: r.payload_range(0)[0] + 1),
    "between payloads": cut(lambda r: r.payload_range(1)[0]),
    "one byte short": cut(lambda r: len(r.data) - 1),
}


@pytest.fixture(scope="module")
def other_bundle(example_pair, keypair, tmp_path_factory) -> str:
    """Another bundle by the same trusted key: the example pair the other way round."""
    out = str(tmp_path_factory.mktemp("other") / "reverse.dimg")
    assert run_cli("make", example_pair[1], example_pair[0], "-o", out, "--key", keypair[0]).returncode == 0
    return out


def write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "tampered.dimg"
    path.write_bytes(data)
    return str(path)


def assert_refused_with_nothing_written(result: subprocess.CompletedProcess, code: int, reason: str, tmp_path: Path):
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("deltaimg: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["tampered.dimg"]  # no output, no temporary file


def apply_to_archive_cli(path: str, keypair, example_pair, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_cli("apply", path, "--trust", keypair[1], "--base", example_pair[0], "-o", str(tmp_path / "out.tar"))


def test_the_untouched_bundle_is_accepted(example_bundle, example_pair, keypair, tmp_path):
    bundle = open_bundle(example_bundle, [load_public(keypair[1])])
    assert bundle.signer is not None and bundle.signer.key_id == load_public(keypair[1]).key_id
    shutil.copy(example_bundle, tmp_path / "tampered.dimg")  # the control for every case below
    result = apply_to_archive_cli(str(tmp_path / "tampered.dimg"), keypair, example_pair, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("region", FLIPS)
def test_one_flipped_byte_in_any_region_is_refused(example_bundle, example_pair, keypair, tmp_path, region):
    edit, code, reason = FLIPS[region]
    path = write(tmp_path, edit(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, code, reason, tmp_path)


@pytest.mark.parametrize("where", CUTS)
def test_a_bundle_cut_short_anywhere_is_refused_as_truncated(example_bundle, example_pair, keypair, tmp_path, where):
    path = write(tmp_path, CUTS[where](Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    reason = "not a deltaimg bundle" if os.path.getsize(path) < 8 else "truncated"
    assert_refused_with_nothing_written(result, FORMAT, reason, tmp_path)


@pytest.mark.parametrize("junk", [b"\0", b"junk" * 1024, b"copy"], ids=["one zero byte", "4 KiB", "the bundle again"])
def test_bytes_appended_after_the_payloads_are_refused(example_bundle, example_pair, keypair, tmp_path, junk):
    data = Path(example_bundle).read_bytes()
    path = write(tmp_path, data + (data if junk == b"copy" else junk))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, FORMAT, "unexpected bytes appended", tmp_path)


def test_a_payload_swapped_in_from_another_bundle_with_the_same_size_is_refused(
        example_bundle, other_bundle, example_pair, keypair, tmp_path):
    mine, theirs = Regions.of(example_bundle), Regions.of(other_bundle)
    start, end = mine.payload_range(0)
    their_start, their_end = theirs.payload_range(0)
    foreign = (theirs.data[their_start:their_end] * 2)[: end - start]  # another bundle's bytes, made to fit
    assert foreign != mine.data[start:end]
    path = write(tmp_path, mine.data[:start] + foreign + mine.data[end:])
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, INTEGRITY, "payload layer-0 does not match its signed sha256", tmp_path)


def test_a_payload_swapped_in_from_another_bundle_with_another_size_is_refused(
        example_bundle, other_bundle, example_pair, keypair, tmp_path):
    mine, theirs = Regions.of(example_bundle), Regions.of(other_bundle)
    start, end = mine.payload_range(0)
    their_start, their_end = theirs.payload_range(0)
    assert their_end - their_start != end - start
    path = write(tmp_path, mine.data[:start] + theirs.data[their_start:their_end] + mine.data[end:])
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    reason = "truncated" if their_end - their_start < end - start else "appended"
    assert_refused_with_nothing_written(result, FORMAT, reason, tmp_path)


def test_a_manifest_and_signature_from_one_bundle_with_the_payloads_of_another_is_refused(
        example_bundle, other_bundle, example_pair, keypair, tmp_path):
    mine, theirs = Regions.of(example_bundle), Regions.of(other_bundle)
    mixed = theirs.data[: theirs.payload_start] + mine.data[mine.payload_start:]
    extra = len(mixed) - len(theirs.data)
    assert extra > 0  # the example's forward payloads are the larger: the signed sizes do not add up
    path = write(tmp_path, mixed)
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, FORMAT, f"{path} has {extra} unexpected bytes appended\n", tmp_path)


def test_payloads_of_another_bundle_cut_to_the_signed_sizes_are_refused_by_their_hashes(
        example_bundle, other_bundle, example_pair, keypair, tmp_path):
    mine, theirs = Regions.of(example_bundle), Regions.of(other_bundle)
    mixed = theirs.data[: theirs.payload_start] + mine.data[mine.payload_start:][:len(theirs.data) - theirs.payload_start]
    path = write(tmp_path, mixed)
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    first = theirs.payloads[0]["name"]
    assert_refused_with_nothing_written(result, INTEGRITY, f"{path}: payload {first} does not match its signed sha256", tmp_path)


def test_a_valid_signature_from_another_bundle_by_the_same_key_is_refused(
        example_bundle, other_bundle, example_pair, keypair, tmp_path):
    path = write(tmp_path, with_signature_block(Regions.of(other_bundle).signature)(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, SIGNATURE, "does not match its contents: it was altered", tmp_path)


def test_a_bundle_resigned_by_an_untrusted_key_is_refused(example_bundle, example_pair, keypair, other_keypair, tmp_path):
    path = write(tmp_path, resigned(other_keypair[0])(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    other_id = load_public(other_keypair[1]).key_id
    assert_refused_with_nothing_written(result, SIGNATURE, f"signed by key {other_id}, which is not trusted here", tmp_path)


def test_an_untrusted_signature_claiming_the_trusted_key_id_is_refused(example_bundle, example_pair, keypair, other_keypair, tmp_path):
    trusted_id = load_public(keypair[1]).key_id
    path = write(tmp_path, resigned(other_keypair[0], claim_key_id=trusted_id)(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, SIGNATURE, f"signature by key {trusted_id} does not match", tmp_path)


@pytest.mark.parametrize("block", [b"", b"{}", bytes(71), bytes(72) + b"\x01", b"[[[[" * 4000],
                         ids=["stripped", "two bytes", "one byte short", "not zeros after it", "16 KB"])
def test_a_missing_or_meaningless_signature_is_refused(example_bundle, example_pair, keypair, tmp_path, block):
    path = write(tmp_path, with_signature_block(block)(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, SIGNATURE, "no readable Ed25519 signature", tmp_path)


def test_a_key_id_crafted_to_break_the_error_line_is_shown_as_hex(example_bundle, example_pair, keypair, other_keypair, tmp_path):
    crafted = "x\n\x1b[2Jfo".encode().hex()  # the stored key id is 8 raw bytes, always shown as 16 hex digits
    path = write(tmp_path, resigned(other_keypair[0], claim_key_id=crafted)(Regions.of(example_bundle)))
    result = apply_to_archive_cli(path, keypair, example_pair, tmp_path)
    assert_refused_with_nothing_written(result, SIGNATURE, f"signed by key {crafted}, which is not trusted", tmp_path)
    assert "\x1b" not in result.stderr


def test_no_trusted_key_at_all_refuses_every_bundle(example_bundle, tmp_path):
    empty = tmp_path / "trusted.d"
    empty.mkdir()
    result = run_cli("verify", example_bundle, "--trust-dir", str(empty))
    assert result.returncode == SIGNATURE and "no trusted key given" in result.stderr


def test_not_a_bundle_at_all(tmp_path, keypair):
    path = tmp_path / "random.dimg"
    path.write_bytes(os.urandom(3000))
    result = run_cli("verify", str(path), "--trust", keypair[1])
    assert result.returncode == FORMAT and "not a deltaimg bundle" in result.stderr


# --------------------------------------------------------------------------- the engine path
#
# ``deltaimg apply BUNDLE --trust K.pub`` without --base talks to the engine. A base image runs a
# container there; the intact bundle would load the target and swap the container (the control
# test, last, shows it does). No tampered bundle may change an image, a tag or a container.
# The engine is shared with other test runs, so what is compared is what this bundle could touch.

# the edit, the exit code and the reason it must give ({first}: the first payload's name)
ENGINE_CASES: dict[str, tuple[Edit, int, str]] = {
    "manifest byte": (FLIPS["manifest, middle"][0], SIGNATURE, "does not match its contents"),
    "signature byte": (FLIPS["signature bytes"][0], SIGNATURE, "does not match its contents"),
    "payload byte": (FLIPS["payload 0, middle"][0], INTEGRITY, "payload {first} does not match its signed sha256"),
    "config payload byte": (FLIPS["config payload"][0], INTEGRITY, "payload config does not match its signed sha256"),
    "truncated": (CUTS["in payload 0"], FORMAT, "is truncated"),
    "appended": (lambda r: r.data + b"junk", FORMAT, "has 4 unexpected bytes appended"),
    "stripped signature": (with_signature_block(b""), SIGNATURE, "no readable Ed25519 signature"),
}


@pytest.fixture(scope="module")
def engine_app(docker_client, keypair, tmp_path_factory):
    """v1 in the engine with a container on it, and a bundle v1 -> v2 whose target the engine lacks."""
    from tests.engine_helpers import SLEEP_FOREVER, EngineResources

    res = EngineResources(docker_client)
    v1 = res.build("v1", [f'CMD ["sh", "-c", "{SLEEP_FOREVER}"]'])
    v2 = res.build("v2", ["RUN echo 2 > /version"], base=v1)
    bundle = str(tmp_path_factory.mktemp("engine-bundle") / "v2.dimg")
    made = run_cli("make", f"docker-daemon:{v1}", f"docker-daemon:{v2}", "-o", bundle, "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    docker_client.api.remove_image(v2)
    container = docker_client.api.create_container(v1, name=res.name("app"))["Id"]
    docker_client.api.start(container)
    yield {"res": res, "v1": v1, "v2": v2, "bundle": bundle, "container": container}
    res.cleanup()
    if _has_image(docker_client, v2):  # loaded by the control test
        docker_client.api.remove_image(v2, force=True)


def _has_image(client, image_id: str) -> bool:
    return any(i["Id"] == image_id for i in client.api.images(all=True))


def engine_state(client, app: dict) -> tuple[frozenset, frozenset]:
    """What apply could change for this bundle: the base and target images (by ID and by the
    bundle's tags) and the containers on either or named for this test, with their state. (Not
    the whole engine: other test runs may share it.)"""
    manifest = json.loads(bundle_format.manifest_json(read_header(app["bundle"])[0], app["bundle"]))
    ids, tags = {app["v1"], app["v2"]}, set(manifest["base"]["tags"] + manifest["target"]["tags"])
    images = frozenset((i["Id"], tuple(sorted(i.get("RepoTags") or []))) for i in client.api.images(all=True)
                       if i["Id"] in ids or tags & set(i.get("RepoTags") or []))
    containers = frozenset((c["Id"], c["ImageID"], c["State"], tuple(c["Names"])) for c in client.api.containers(all=True)
                           if c["ImageID"] in ids or any(n.startswith("/" + app["res"].prefix) for n in c["Names"]))
    return images, containers


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_a_tampered_bundle_changes_nothing_in_the_engine(docker_client, engine_app, keypair, tmp_path, case):
    assert not _has_image(docker_client, engine_app["v2"])
    edit, code, reason = ENGINE_CASES[case]
    regions = Regions.of(engine_app["bundle"])
    path = write(tmp_path, edit(regions))
    reason = reason.format(first=regions.payloads[0]["name"])
    before = engine_state(docker_client, engine_app)
    result = run_cli("apply", path, "--trust", keypair[1], "--grace", "1")
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("deltaimg: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr and result.stdout == ""
    assert engine_state(docker_client, engine_app) == before


def test_an_untrusted_signer_changes_nothing_in_the_engine(docker_client, engine_app, keypair, other_keypair, tmp_path):
    path = write(tmp_path, resigned(other_keypair[0])(Regions.of(engine_app["bundle"])))
    before = engine_state(docker_client, engine_app)
    result = run_cli("apply", path, "--trust", keypair[1], "--grace", "1")
    assert result.returncode == SIGNATURE and "not trusted here" in result.stderr
    assert engine_state(docker_client, engine_app) == before


def test_control_the_intact_bundle_does_change_the_engine(docker_client, engine_app, keypair):
    before = engine_state(docker_client, engine_app)
    result = run_cli("apply", engine_app["bundle"], "--trust", keypair[1], "--grace", "1")
    assert result.returncode == 0, result.stderr
    assert engine_state(docker_client, engine_app) != before
    assert _has_image(docker_client, engine_app["v2"])
    swapped = docker_client.api.inspect_container(engine_app["res"].name("app"))
    assert swapped["Image"] == engine_app["v2"] and swapped["Id"] != engine_app["container"]


# --------------------------------------------------------------------------- auditing without deltaimg


def audit_script() -> str:
    """The shell recipe of docs/bundle-format.md's audit section, verbatim."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "bundle-format.md").read_text()
    section = text.split("## Auditing a bundle without deltaimg", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def run_audit(bundle: str, public_key: str, workdir: Path, base: str | None = None) -> subprocess.CompletedProcess:
    missing = [tool for tool in ("openssl", "zstd") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the audit recipe's {', '.join(missing)} is not installed", pytrace=False)
        pytest.skip(f"the audit recipe uses openssl and zstd; {', '.join(missing)} is not installed")
    shutil.copy(bundle, workdir / "app.dimg")
    shutil.copy(public_key, workdir / "release-key.pub")
    if base:
        (workdir / "base-config.json").write_bytes(archive_image(base)[0])
    return subprocess.run(["bash", "-c", "set -o pipefail\n" + audit_script()], cwd=workdir, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("key_format", ["PEM", "OpenSSH"])
def test_the_documented_audit_recipe_verifies_a_real_bundle(example_bundle, example_pair, keypair, tmp_path, key_format):
    public_key = keypair[1]
    if key_format == "OpenSSH":  # the same key as one "ssh-ed25519 AAAA... comment" line
        line = load_public(keypair[1]).public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        public_key = str(tmp_path / "ssh.pub")
        Path(public_key).write_bytes(line + b" release@build-host\n")
    result = run_audit(example_bundle, public_key, tmp_path, base=example_pair[0])
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout
    assert "length OK" in result.stdout and "payloads OK" in result.stdout
    assert "config matches target image_id" in result.stdout


def test_the_documented_audit_recipe_without_the_base_config_checks_all_but_the_config(example_bundle, keypair, tmp_path):
    result = run_audit(example_bundle, keypair[1], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "payloads OK" in result.stdout and "config not checked" in result.stdout


AUDIT_CATCHES = {  # what the recipe prints for each flipped byte: it stops at the first check that fails
    "manifest, middle": "Signature Verification Failure\n",
    "payload 0, middle": ("Signature Verified Successfully\nlength OK\npayload layer-0 MISMATCH\n"
                          "config not checked: the payloads do not check out\n"),
}


@pytest.mark.parametrize("region", AUDIT_CATCHES)
def test_the_documented_audit_recipe_catches_tampering(example_bundle, example_pair, keypair, tmp_path, region):
    tampered = tmp_path / "in" / "app.dimg"
    tampered.parent.mkdir()
    tampered.write_bytes(FLIPS[region][0](Regions.of(example_bundle)))
    (tmp_path / "out").mkdir()
    result = run_audit(str(tampered), keypair[1], tmp_path / "out", base=example_pair[0])
    assert (result.returncode, result.stdout, result.stderr) == (1, AUDIT_CATCHES[region], "")


def test_a_part_that_goes_away_while_the_bundle_is_read_is_one_clear_error(example_pair, keypair, tmp_path):
    """An edge host reads a stick: a part can vanish (stick pulled) between opening and verifying."""
    made = run_cli("make", *example_pair, "-o", str(tmp_path / "split.dimg"), "--key", keypair[0], "--split-size", "1K")
    assert made.returncode == 0, made.stderr
    opened = open_bundle(str(tmp_path / "split.dimg.001"), [load_public(keypair[1])], check_payloads=False)
    last = opened.parts[-1][0]
    os.rename(last, last + ".gone")
    with pytest.raises(BundleFormatError, match=f"cannot read {last}: No such file"):
        verify_payloads(opened)


def test_verify_and_inspect_take_a_split_bundle_by_its_name_as_apply_does(example_pair, keypair, tmp_path):
    made = run_cli("make", *example_pair, "-o", str(tmp_path / "split.dimg"), "--key", keypair[0], "--split-size", "1K")
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "split.dimg").exists() and (tmp_path / "split.dimg.002").exists()
    for command in ("verify", "inspect"):
        result = run_cli(command, str(tmp_path / "split.dimg"), "--trust", keypair[1])
        assert result.returncode == 0, result.stderr
    folder = run_cli("verify", str(tmp_path), "--trust", keypair[1])
    assert folder.returncode == 2 and "is a folder" in folder.stderr
