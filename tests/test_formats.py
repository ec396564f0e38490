"""Every input form make and apply read, and every tar edge case, round-trips to the same image ID."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from deltaimg.bundle import signing
from deltaimg.apply.archive import apply_to_archive
from deltaimg.bundle.reader import open_bundle
from deltaimg.errors import ImageReadError
from deltaimg.images import open_image
from deltaimg.make.build import make_bundle
from tests import imagefactory as f
from tests.conftest import assert_same_image, run_cli


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> f.ExamplePair:
    return f.build_example_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> f.ImageSpec:
    return f.build_edge_image(tmp_path_factory.mktemp("edge"))


def round_trip(old_ref: str, new_ref: str, keypair, tmp_path: Path, expected_config: bytes, platform=None) -> dict:
    """make old->new, then apply onto old; the rebuilt archive must be exactly the new image."""
    bundle_path = str(tmp_path / "b.dimg")
    manifest = make_bundle(open_image(old_ref, platform), open_image(new_ref, platform), bundle_path,
                           signing.load_private(keypair[0]))
    bundle = open_bundle(bundle_path, [signing.load_public(keypair[1])])
    out = tmp_path / "rebuilt.tar"
    apply_to_archive(bundle, open_image(old_ref, platform), str(out))
    assert_same_image(str(out), expected_config)
    assert open_image(str(out)).config_digest == "sha256:" + hashlib.sha256(expected_config).hexdigest()
    return manifest


def written(images: list[f.WrittenImage]) -> f.WrittenImage:
    assert len(images) == 1
    return images[0]


@pytest.mark.parametrize("form", ["legacy", "oci"])
def test_docker_save_archives_both_forms(pair, keypair, tmp_path, form):
    v1 = written(f.write_docker_archive(tmp_path / "v1.tar", [pair.v1], form=form))
    v2 = written(f.write_docker_archive(tmp_path / "v2.tar", [pair.v2], form=form))
    manifest = round_trip(f"docker-archive:{v1.path}", f"docker-archive:{v2.path}", keypair, tmp_path, v2.config_bytes)
    methods = [layer["method"] for layer in manifest["layers"]]
    assert methods[0] == "base" and methods[1:] == ["delta"] * 3  # the shared os layer is referenced
    assert "layer-0" not in {p["name"] for p in manifest["payloads"]}


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_oci_layouts_with_any_layer_compression(pair, keypair, tmp_path, compression):
    v1 = written(f.write_oci_dir(tmp_path / "v1", [pair.v1], compression=compression))
    v2 = written(f.write_oci_dir(tmp_path / "v2", [pair.v2], compression=compression))
    round_trip(f"oci:{v1.path}", f"oci:{v2.path}", keypair, tmp_path, v2.config_bytes)


def test_oci_archives_and_mixed_inputs(pair, keypair, tmp_path):
    v1 = written(f.write_oci_archive(tmp_path / "v1.oci.tar", [pair.v1], compression="gzip"))
    v2 = written(f.write_docker_archive(tmp_path / "v2.tar", [pair.v2], form="legacy"))
    round_trip(f"oci-archive:{v1.path}", str(v2.path), keypair, tmp_path, v2.config_bytes)


def test_every_tar_edge_case_survives_byte_exactly(pair, edge, keypair, tmp_path):
    base = written(f.write_docker_archive(tmp_path / "v1.tar", [pair.v1]))
    target = written(f.write_docker_archive(tmp_path / "edge.tar", [edge]))
    manifest = round_trip(str(base.path), str(target.path), keypair, tmp_path / "", target.config_bytes)
    methods = [layer["method"] for layer in manifest["layers"]]
    assert methods.count("repeat") == 1  # the empty layer appears twice and travels once


def test_edge_cases_as_the_old_image_too(edge, keypair, tmp_path):
    """Deltas whose partners are hardlinks, devices, whiteouts and long or non-ASCII names."""
    layers = list(edge.layers)
    changed = f.write_layer(tmp_path / "changed.tar", f.rebuild(f.edge_case_entries()))
    v1 = written(f.write_docker_archive(tmp_path / "v1.tar", [edge]))
    v2_spec = dataclasses.replace(edge, layers=[changed, *layers[1:]], tags=["edge:2"])
    v2 = written(f.write_docker_archive(tmp_path / "v2.tar", [v2_spec]))
    round_trip(str(v1.path), str(v2.path), keypair, tmp_path, v2.config_bytes)


def test_a_rebuild_with_new_timestamps_costs_almost_nothing(pair, keypair, tmp_path):
    python_layer = pair.layers["python-v1"]
    v1 = written(f.write_docker_archive(tmp_path / "v1.tar", [f.ImageSpec([python_layer], ["py:1"])]))
    v2 = written(f.write_docker_archive(tmp_path / "v2.tar", [f.ImageSpec([pair.layers["python-v2"]], ["py:2"])]))
    manifest = round_trip(str(v1.path), str(v2.path), keypair, tmp_path, v2.config_bytes)
    layer = manifest["layers"][0]
    assert layer["stats"]["identical"] == layer["stats"]["files"]
    assert layer["payload_size"] * 200 < python_layer.size


def test_an_archive_with_several_images_needs_a_choice(pair, edge, tmp_path):
    archive = tmp_path / "both.tar"
    images = f.write_docker_archive(archive, [pair.v1, pair.v2])
    with pytest.raises(ImageReadError) as error:
        open_image(str(archive))
    for tag in pair.v1.tags + pair.v2.tags:
        assert tag in str(error.value)
    chosen = open_image(f"{archive}:{pair.v2.tags[0]}")
    assert chosen.config_digest == images[1].config_digest


def test_a_nested_index_with_two_platforms_is_chosen_by_platform(pair, tmp_path):
    arm = dataclasses.replace(pair.v1, config={**pair.v1.config, "architecture": "arm64", "variant": "v8"})
    layout = tmp_path / "multi"
    images = f.write_oci_dir(layout, [pair.v1, arm], nested_index_ref="app:multi")
    with pytest.raises(ImageReadError) as error:
        open_image(f"oci:{layout}")
    assert "linux/amd64" in str(error.value) and "linux/arm64" in str(error.value)
    assert open_image(f"oci:{layout}", platform="linux/arm64").config_digest == images[1].config_digest
    assert open_image(f"oci:{layout}", platform="linux/amd64").config_digest == images[0].config_digest


def test_damaged_inputs_to_make_get_clear_errors(pair, keypair, tmp_path):
    good = written(f.write_docker_archive(tmp_path / "v1.tar", [pair.v1]))
    layout = written(f.write_oci_dir(tmp_path / "layout", [pair.v2]))
    index = json.loads((layout.path / "index.json").read_text())
    manifest_blob = layout.path / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(manifest_blob.read_text())
    changed_layer = layout.path / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    changed_layer.write_bytes(changed_layer.read_bytes()[:-4096])  # no longer hashes to its diff_id
    result = run_cli("make", str(good.path), f"oci:{layout.path}", "-o", str(tmp_path / "x.dimg"), "--key", keypair[0])
    assert result.returncode == ImageReadError.exit_code, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.dimg").exists()

    (layout.path / "index.json").write_text("{not json")
    result = run_cli("make", str(good.path), f"oci:{layout.path}", "-o", str(tmp_path / "x.dimg"), "--key", keypair[0])
    assert result.returncode == ImageReadError.exit_code and "index.json is not valid JSON" in result.stderr

    (layout.path / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:../../../etc/passwd"}]}))
    result = run_cli("make", str(good.path), f"oci:{layout.path}", "-o", str(tmp_path / "x.dimg"), "--key", keypair[0])
    assert result.returncode == ImageReadError.exit_code and "Traceback" not in result.stderr


def test_make_reads_a_compressed_old_layer_in_passing_and_keeps_only_what_it_asks_for(pair, tmp_path):
    """make never decompresses a whole old layer to disk: it indexes it as it streams past, then
    keeps the parts of the entries the encoder will read. Reading anything else is a bug, never zeros."""
    import tarfile

    from deltaimg.delta.recipe import PART_DATA
    from deltaimg.delta.base_content import BaseContent, BaseIndex

    v1 = written(f.write_oci_dir(tmp_path / "v1", [pair.v1], compression="gzip"))
    image = open_image(f"oci:{v1.path}")
    with BaseContent(image, str(tmp_path), partial=True) as content:
        BaseIndex(content)
        assert content.streamed == list(range(len(image.layers)))
        entry = max((e for layer in content.streamed for e in content.entries(layer)), key=lambda e: e.size)
        content.fetch_entries([(entry.layer, entry.index, PART_DATA, 0, None)])
        with image.layers[entry.layer].open() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            expected = next(tar.extractfile(m).read() for m in tar if m.name == entry.name)  # type: ignore[union-attr]
        assert content.read_data(entry) == expected
        with pytest.raises(RuntimeError, match="not fetched"):
            content.read_pre(entry)
        kept = sum(p.stat().st_blocks * 512 for p in tmp_path.glob("base-layer-*"))
        assert kept < entry.size + (64 << 10)


def test_a_changed_layer_is_coded_against_the_old_layer_it_replaces(keypair, tmp_path):
    """/app exists in two old layers (the copy step and a later compile step, which touched it
    again). The new copy step's /app header matches the old copy step's byte for byte, so it is
    taken whole from there, not edited from the later layer where /app is visible."""
    from deltaimg.delta.decoder import read_recipe
    from deltaimg.delta.recipe import PRE_PARTNER, RecordReader

    def layer(name: str, entries) -> f.LayerFile:
        return f.write_layer(tmp_path / name, entries)

    copy_v1 = layer("copy1.tar", [f.directory("app", mtime=1000), f.file("app/main.py", b"print('v1')\n" * 40, mtime=1000)])
    copy_v2 = layer("copy2.tar", [f.directory("app", mtime=1000), f.file("app/main.py", b"print('v2')\n" * 40, mtime=1000)])
    compiled = layer("compile.tar", [f.directory("app", mtime=2000), f.file("app/main.pyc", b"\x00" * 300, mtime=2000)])
    compiled_v2 = layer("compile2.tar", [f.directory("app", mtime=3000), f.file("app/main.pyc", b"\x01" * 300, mtime=3000)])
    v1 = written(f.write_docker_archive(tmp_path / "v1.tar", [f.ImageSpec([copy_v1, compiled], ["app:1"])]))
    v2 = written(f.write_docker_archive(tmp_path / "v2.tar", [f.ImageSpec([copy_v2, compiled_v2], ["app:2"])]))
    round_trip(str(v1.path), str(v2.path), keypair, tmp_path, v2.config_bytes)

    bundle = open_bundle(str(tmp_path / "b.dimg"), [signing.load_public(keypair[1])])
    with bundle.open_payload("layer-0") as payload:
        _, records = read_recipe(payload)
    app = RecordReader(records).next()
    assert (app.partner, app.pre_kind) == ((0, 0), PRE_PARTNER)
