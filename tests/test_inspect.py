"""``deltaimg inspect BUNDLE``: what is on the stick, before anyone carries it to a site.

make signs a summary of the package and config changes into the manifest; inspect shows it with
the base and target, the signer, the per-layer plan and where the bundle's bytes go.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from deltaimg.bundle import format as bundle_format
from deltaimg.bundle import signing
from deltaimg.errors import BundleFormatError
from deltaimg.units import human_size
from tests import imagefactory as f
from tests.conftest import run_cli
from tests.test_diff import CONFIG_TEXT, PACKAGE_CHANGES, PACKAGE_TEXT

GOLDEN = Path(__file__).resolve().parent.parent / "bundles" / "v1" / "bundle.dimg"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> f.PackageUpgradePair:
    return f.build_package_upgrade_pair(tmp_path_factory.mktemp("inspect-layers"))


@pytest.fixture(scope="module")
def made(pair, keypair, tmp_path_factory) -> tuple[str, dict]:
    """(bundle path, make's --json output) for the package upgrade pair."""
    tmp = tmp_path_factory.mktemp("inspect")
    old = f.write_docker_archive(tmp / "shop-1.0.tar", [pair.v1])[0].path
    new = f.write_docker_archive(tmp / "shop-1.1.tar", [pair.v2])[0].path
    bundle = str(tmp / "shop.dimg")
    result = run_cli("make", str(old), str(new), "-o", bundle, "--key", keypair[0], "--json")
    assert result.returncode == 0, result.stderr
    return bundle, json.loads(result.stdout)


def test_make_signs_the_package_and_config_changes_into_the_manifest(made, keypair):
    bundle, manifest = made
    assert manifest["changes"]["packages"] == PACKAGE_CHANGES
    assert manifest["changes"]["package_databases"] == ["deb", "apk", "python"]
    assert [(c["key"], c["name"]) for c in manifest["changes"]["config"]][:4] == [
        ("Env", "APP_VERSION"), ("Env", "DEBUG"), ("Env", "LOG_LEVEL"), ("Labels", "org.opencontainers.image.version")]
    verified = json.loads(run_cli("inspect", bundle, "--trust", keypair[1], "--json").stdout)
    assert verified["verified"] is True and verified["changes"] == manifest["changes"]


def test_inspect_shows_the_package_summary_before_the_stick_leaves(made):
    text = run_cli("inspect", made[0]).stdout
    indented = "\n".join("  " + line for line in (PACKAGE_TEXT + "\n" + CONFIG_TEXT).splitlines())
    assert text.endswith(indented + "\n")
    assert "      openssl 3.0.20-1 → 3.0.22-1\n" in text


def test_inspect_shows_base_target_signer_plan_payloads_and_ratio(made, pair, keypair):
    bundle, manifest = made
    result = run_cli("inspect", bundle, "--json")
    data = json.loads(result.stdout)
    assert data["signer_key_id"] == signing.load_public(keypair[1]).key_id and data["verified"] is False
    assert data["layer_plan"] == ["referenced", "rebuilt", "rebuilt"]
    assert sum(data["payload_bytes"].values()) == data["size"] == Path(bundle).stat().st_size
    assert 0 < data["payload_bytes"]["config"] < len(f.image_config(pair.v2)) // 2  # a delta against the base config
    lines = run_cli("inspect", bundle).stdout.splitlines()
    base, target = manifest["base"]["image_id"][:19], manifest["target"]["image_id"][:19]
    assert lines[1] == f"  signed by key {data['signer_key_id']}: NOT verified (pass --trust KEY.pub to check)"
    assert lines[2] == f"  base:   deltaimg/shop:1.0 {base}, created {f.CREATED}"
    assert lines[3] == f"  target: deltaimg/shop:1.1 {target}, 3 layers, created {f.UPGRADE_CREATED}"
    assert lines[4].startswith("  layer 0: ") and lines[4].endswith(" referenced: base layer 0")
    assert " rebuilt from a " in lines[5] and lines[6].strip().startswith("15 files: 14 unchanged")
    sizes = data["payload_bytes"]
    assert lines[9] == (f"  payloads: {human_size(sizes['delta'])} layer deltas, {human_size(sizes['config'])} config, "
                        f"{human_size(sizes['header'])} manifest and signature")
    assert lines[10].startswith("  bundle ") and lines[10].endswith("x smaller")


def test_a_layer_that_uses_nothing_of_the_base_is_shipped(pair, keypair, tmp_path):
    extra = f.write_layer(tmp_path / "extra.tar", f.complete_tree([f.file("opt/tools/zen.txt", (f.STDLIB / "this.py").read_bytes())]))
    old = f.write_docker_archive(tmp_path / "a.tar", [f.ImageSpec([pair.v1.layers[0]], ["tools:1"])])[0].path
    new = f.write_docker_archive(tmp_path / "b.tar", [f.ImageSpec([pair.v1.layers[0], extra], ["tools:2"])])[0].path
    bundle = str(tmp_path / "tools.dimg")
    assert run_cli("make", str(old), str(new), "-o", bundle, "--key", keypair[0]).returncode == 0
    data = json.loads(run_cli("inspect", bundle, "--json").stdout)
    assert data["layer_plan"] == ["referenced", "shipped"]
    assert data["payload_bytes"]["delta"] == 0 and data["payload_bytes"]["shipped"] == data["layers"][1]["payload_size"]
    text = run_cli("inspect", bundle).stdout
    assert " shipped: " in text and "  packages: no changes (Debian packages, Alpine packages read)\n" in text


def test_a_manifest_without_the_summary_inspects_without_it(tmp_path):
    """The package and config summary is optional: a manifest without it (unsigned then, as
    inspect without --trust reads anything) shows the rest."""
    bare = tmp_path / "bare.dimg"
    _with_manifest(GOLDEN, bare, lambda m: m.pop("changes"))
    result = run_cli("inspect", str(bare))
    assert result.returncode == 0, result.stderr
    assert "packages:" not in result.stdout and "config:" not in result.stdout
    assert result.stdout.splitlines()[-1].endswith("x smaller")
    data = json.loads(run_cli("inspect", str(bare), "--json").stdout)
    assert "changes" not in data
    assert data["layer_plan"] == ["rebuilt", "referenced", "referenced"]


def _with_manifest(bundle: Path, out: Path, edit) -> None:
    """A copy of ``bundle`` whose manifest was edited (so its signature no longer matches)."""
    data = bundle.read_bytes()
    (length,) = struct.unpack(">I", data[12:16])
    manifest = json.loads(bundle_format.manifest_json(data[16:16 + length], str(bundle)))
    edit(manifest)
    body = bundle_format.encode_manifest(manifest)
    out.write_bytes(data[:12] + struct.pack(">I", len(body)) + body + data[16 + length:])


def test_a_malformed_changes_section_is_a_format_error_not_a_crash(made, tmp_path):
    broken = tmp_path / "broken.dimg"
    _with_manifest(Path(made[0]), broken, lambda m: m.update(changes={"packages": "openssl"}))
    result = run_cli("inspect", str(broken))
    assert result.returncode == BundleFormatError.exit_code
    assert result.stderr == f"deltaimg: error: {broken}: the manifest's changes section is malformed\n"


def test_a_split_bundle_is_inspected_from_its_first_part_with_the_size_of_all_parts(pair, keypair, tmp_path):
    old = f.write_docker_archive(tmp_path / "a.tar", [pair.v1])[0].path
    new = f.write_docker_archive(tmp_path / "b.tar", [pair.v2])[0].path
    stem = tmp_path / "shop.dimg"
    assert run_cli("make", str(old), str(new), "-o", str(stem), "--key", keypair[0], "--split-size", "1800").returncode == 0
    parts = sorted(tmp_path.glob("shop.dimg.0*"))
    assert len(parts) >= 2
    data = json.loads(run_cli("inspect", str(parts[0]), "--json").stdout)
    assert data["size"] == sum(data["payload_bytes"].values()) == sum(p.stat().st_size for p in parts)
    assert data["changes"]["packages"] == PACKAGE_CHANGES
