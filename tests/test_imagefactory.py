"""The image factory writes valid tars and archives: everything is re-read with tarfile/json."""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import tarfile
from pathlib import Path
from typing import Callable

import pytest
import zstandard

from tests import imagefactory as f

Reader = Callable[[str], bytes]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> f.ExamplePair:
    return f.build_example_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> f.ImageSpec:
    return f.build_edge_image(tmp_path_factory.mktemp("edge"))


def _layer(spec: f.ImageSpec, name: str) -> f.LayerFile:
    return next(layer for layer in spec.layers if layer.path.name == name)


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {member.name: member for member in tar}


def _tar_reader(path: Path) -> Reader:
    """Read a member's bytes, following symlinks the way a reader of ``docker save`` output must."""
    with tarfile.open(path) as tar:
        members = {m.name.rstrip("/"): m for m in tar}
        files = {name: tar.extractfile(m).read() for name, m in members.items() if m.isfile()}

    def read(name: str) -> bytes:
        member = members[name]
        if member.issym():
            return read(posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname)))
        return files[name]

    return read


def _dir_reader(root: Path) -> Reader:
    return lambda name: (root / name).read_bytes()


def _decompress(data: bytes, media_type: str) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.decompress(data)
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert media_type == f.MEDIA_TYPE_LAYER
    return data


def _check_oci_image(read: Reader, manifest_descriptor: dict, written: f.WrittenImage) -> None:
    """The manifest, config and layer blobs exist, hash to their digests, and match the config's diff_ids."""
    manifest_bytes = read("blobs/sha256/" + _hex(manifest_descriptor["digest"]))
    assert _sha256(manifest_bytes) == manifest_descriptor["digest"] == written.manifest_digest
    assert len(manifest_bytes) == manifest_descriptor["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == f.MEDIA_TYPE_MANIFEST
    config_bytes = read("blobs/sha256/" + _hex(manifest["config"]["digest"]))
    assert _sha256(config_bytes) == manifest["config"]["digest"] == written.config_digest
    assert config_bytes == written.config_bytes
    diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    assert diff_ids == written.diff_ids and len(diff_ids) == len(manifest["layers"])
    for descriptor, diff_id in zip(manifest["layers"], diff_ids):
        blob = read("blobs/sha256/" + _hex(descriptor["digest"]))
        assert _sha256(blob) == descriptor["digest"] and len(blob) == descriptor["size"]
        assert _sha256(_decompress(blob, descriptor["mediaType"])) == diff_id


# --------------------------------------------------------------------------- layer tars


@pytest.mark.parametrize("name", ["edge.tar", "edge-python-pax.tar", "edge-gnu.tar"])
def test_edge_entries_come_back(edge: f.ImageSpec, name: str) -> None:
    members = _members(_layer(edge, name).path)
    assert members["dev/null"].ischr() and (members["dev/null"].devmajor, members["dev/null"].devminor) == (1, 3)
    assert members["dev/sda"].isblk() and (members["dev/sda"].devmajor, members["dev/sda"].devminor) == (8, 0)
    assert members["run/initctl"].isfifo()
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert members["usr/bin/su"].mode == 0o4755 and members["usr/bin/wall"].mode == 0o2755
    assert members["etc/empty.conf"].isfile() and members["etc/empty.conf"].size == 0
    assert (members["etc/owned-by-user"].uid, members["etc/owned-by-user"].gid) == (1000, 1000)
    assert members["etc/localtime"].issym() and members["etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"
    assert members["usr/bin/long-target"].linkname == "../" + f.LONG_PAX_NAME
    link = members["usr/bin/z-hardlink-to-motd"]
    assert link.islnk() and link.linkname == "etc/motd"
    assert members["usr/bin/z-hardlink-long"].linkname == f.LONG_PAX_NAME
    for long_name in (f.LONG_SPLIT_NAME, f.LONG_PAX_NAME, f.LONG_COMPONENT_NAME, f.UNICODE_NAME):
        assert members[long_name].isfile()
    assert len(f.LONG_PAX_NAME) > 255 and len(f.LONG_SPLIT_NAME) > 100
    assert all(m.mtime == f.FIXED_MTIME for m in members.values())
    if name != "edge-gnu.tar":
        xattr = members["usr/bin/ping"].pax_headers["SCHILY.xattr.security.capability"]
        assert xattr.encode("utf-8", "surrogateescape") == f.SECURITY_CAPABILITY


def test_go_layer_bytes_match_go_archive_tar(edge: f.ImageSpec) -> None:
    path = _layer(edge, "edge.tar").path
    raw = path.read_bytes()
    members = _members(path)
    last = max(members.values(), key=lambda m: m.offset_data)
    assert len(raw) == last.offset_data + -(-last.size // 512) * 512 + 1024
    assert raw[-1024:] == bytes(1024)

    split = members[f.LONG_SPLIT_NAME]
    header = raw[split.offset : split.offset + 512]
    assert header[156:157] == b"0" and header[257:265] == b"ustar\x0000"
    assert header[345:500].rstrip(b"\0") == posixpath.dirname(f.LONG_SPLIT_NAME).encode()

    pax = members[f.LONG_PAX_NAME]
    pax_header = raw[pax.offset : pax.offset + 512]
    assert pax_header[156:157] == b"x"
    parent, base = posixpath.split(f.LONG_PAX_NAME)
    expected = posixpath.join(parent, "PaxHeaders.0", base)
    assert pax_header[:100] == expected.encode()[:100]
    assert b"hdrcharset" not in raw and b"././@" not in raw
    assert b"SCHILY.xattr.security.capability=" + f.SECURITY_CAPABILITY in raw


def test_python_tar_variants(edge: f.ImageSpec) -> None:
    gnu = _layer(edge, "edge-gnu.tar").path.read_bytes()
    python_pax = _layer(edge, "edge-python-pax.tar").path.read_bytes()
    assert b"././@LongLink" in gnu and b"ustar  \0" in gnu
    assert b"hdrcharset=BINARY" in python_pax and b"././@PaxHeader" in python_pax
    assert len(gnu) % 10240 == 0 and len(python_pax) % 10240 == 0
    with pytest.raises(ValueError, match="xattrs"):
        f.write_tar(Path("/dev/null"), [f.file("x", b"", xattrs={"user.a": b"1"})], style="gnu")


def test_empty_and_padded_layers(edge: f.ImageSpec) -> None:
    empty = _layer(edge, "empty.tar")
    assert empty.path.read_bytes() == bytes(1024) and empty.diff_id == f.EMPTY_LAYER_DIFF_ID
    padded = _layer(edge, "padded.tar").path.read_bytes()
    assert len(padded) == 512 + 512 + 1024 + 4 * 512 and padded[-6 * 512 :] == bytes(6 * 512)
    assert list(_members(_layer(edge, "padded.tar").path)) == ["padded.txt"]


def test_upper_layer_whiteouts(edge: f.ImageSpec) -> None:
    members = _members(_layer(edge, "upper.tar").path)
    assert list(members) == [
        ".wh.run",
        "etc",
        "etc/.wh.motd",
        "usr",
        "usr/share",
        "usr/share/i18n",
        "usr/share/i18n/.wh..wh..opq",
        "usr/share/i18n/replacement.txt",
    ]
    assert members["etc/.wh.motd"].isfile() and members["etc/.wh.motd"].mode == 0o600
    opaque = members["usr/share/i18n/.wh..wh..opq"]
    assert opaque.isfile() and opaque.mtime == 0 and opaque.size == 0


def test_large_layer_streams_real_libraries(tmp_path: Path) -> None:
    paths = f.find_elf_files(24 << 20, libraries=True, max_file_bytes=8 << 20)
    layer = f.write_layer(tmp_path / "big.tar", f.complete_tree(f.elf_entries("usr/lib", paths, mode=0o644)))
    assert layer.size > 24 << 20 and layer.diff_id == f.sha256_file(layer.path)
    members = _members(layer.path)
    assert len(members) == len(paths) + 2
    assert all(members[f"usr/lib/{p.name}"].size == p.stat().st_size for p in paths)


def test_tree_entries_walk_order_links_and_hardlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "file").write_bytes(b"data")
    (root / "a-b").write_bytes(b"x")
    (root / "z-link").hardlink_to(root / "a" / "file")
    (root / "sym").symlink_to("a/file")
    entries = f.tree_entries(root, "opt")
    assert [(e.name, e.kind) for e in entries] == [
        ("opt/a", "dir"),
        ("opt/a/file", "file"),
        ("opt/a-b", "file"),
        ("opt/sym", "symlink"),
        ("opt/z-link", "hardlink"),
    ]
    assert entries[-1].linkname == "opt/a/file" and entries[3].linkname == "a/file"
    assert [e.name for e in f.complete_tree(entries)][:2] == ["opt", "opt/a"]


def test_complete_tree_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        f.complete_tree([f.file("a"), f.file("a")])
    with pytest.raises(ValueError, match="before its target"):
        f.complete_tree([f.hardlink("a", "b"), f.file("b")])


# --------------------------------------------------------------------------- content changes


def test_patch_elf_and_edit_python() -> None:
    binary = f.find_elf_files(0)[0].read_bytes()
    patched = f.patch_elf(binary, seed="x")
    assert patched[:64] == binary[:64] and len(patched) == len(binary) + 384
    assert patched != f.patch_elf(binary, seed="y") and patched == f.patch_elf(binary, seed="x")
    assert f.patch_elf(b"\x7fELF" + bytes(200) + b"lib 1.2.9 x" + bytes(200), seed="s").count(b"1.2.0") == 1
    source = b"".join(b"line %d\n" % i for i in range(12))
    edited = f.edit_python(source).splitlines()
    assert len(edited) == 12 and b"_PATCHED = True  # added by the upgrade" in edited
    assert b"line 6  # patched" in edited and b"line 9" not in edited
    assert f.bump_version("1.26.3") == "1.26.4" and f.bump_version("7") == "8"


def test_upgrade_rejects_missing_paths() -> None:
    with pytest.raises(KeyError):
        f.upgrade([f.file("a")], f.UpgradePlan(deletes=["b"]))


def _contents(layer: f.LayerFile) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(layer.path) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar}


def test_example_pair_changes(pair: f.ExamplePair) -> None:
    assert pair.v1.layers[0] is pair.v2.layers[0] is pair.shared
    assert len({layer.diff_id for layer in pair.layers.values()}) == len(pair.layers)
    assert sum(layer.size for layer in pair.v1.layers) > 3 << 20

    python_v1, python_v2 = _contents(pair.layers["python-v1"]), _contents(pair.layers["python-v2"])
    assert python_v1.keys() == python_v2.keys()
    assert all(python_v1[n][1] == python_v2[n][1] and python_v2[n][0].mtime == f.UPGRADE_MTIME for n in python_v1)

    app_v1, app_v2 = _contents(pair.layers["app-v1"]), _contents(pair.layers["app-v2"])
    server_v1, server_v2 = app_v1["app/bin/server"][1], app_v2["app/bin/server"][1]
    assert server_v2.startswith(f.ELF_MAGIC) and len(server_v2) == len(server_v1) + 384 and server_v2 != server_v1
    assert "app/service/legacy.py" in app_v1 and "app/service/legacy.py" not in app_v2
    assert app_v2["app/config/defaults.json"][1] == app_v1["app/service/defaults.json"][1]
    assert "app/service/defaults.json" not in app_v2
    assert b"Version: 2.31.1" in app_v2["app/vendor/requests-2.31.1.dist-info/METADATA"][1]
    assert not any("requests-2.31.0.dist-info" in name for name in app_v2)
    assert {"app/service/feature_flags.py", "app/static/app.css"} <= app_v2.keys()
    assert any(b"_PATCHED = True" in data for name, (_, data) in app_v2.items() if name.endswith(".py"))
    unchanged = app_v2["app/requirements.txt"][0]
    assert unchanged.mtime == f.FIXED_MTIME and app_v2["app/service"][0].mtime == f.UPGRADE_MTIME

    patch = _contents(pair.layers["patch"])
    prefix = f"usr/lib/{f.STDLIB.name}"
    assert f"{prefix}/email/mime/.wh.audio.py" in patch
    assert f"{prefix}/site-packages/.wh.numpy-1.26.3.dist-info" in patch
    assert f"{prefix}/site-packages/numpy-1.26.4.dist-info/RECORD" in patch
    assert f"{prefix}/site-packages/numpy/_distributor_init.py" in patch
    assert all(m.mtime == f.UPGRADE_MTIME for m, _ in patch.values())
    assert len(patch) < len(python_v1) // 2


def test_generation_is_deterministic(tmp_path: Path, pair: f.ExamplePair, edge: f.ImageSpec) -> None:
    again = f.build_example_pair(tmp_path / "pair")
    assert {k: v.diff_id for k, v in again.layers.items()} == {k: v.diff_id for k, v in pair.layers.items()}
    assert [layer.diff_id for layer in f.build_edge_image(tmp_path / "edge").layers] == [
        layer.diff_id for layer in edge.layers
    ]


def test_image_config_defaults(pair: f.ExamplePair) -> None:
    config = json.loads(f.image_config(f.ImageSpec(layers=pair.v1.layers)))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert {"Env", "Cmd", "Labels"} <= config["config"].keys()
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 3
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in pair.v1.layers]}
    assert list(config) == sorted(config)


# --------------------------------------------------------------------------- docker save


def test_docker_legacy_archive(tmp_path: Path, pair: f.ExamplePair, edge: f.ImageSpec) -> None:
    path = tmp_path / "legacy.tar"
    written = f.write_docker_archive(path, [pair.v1, pair.v2, edge], form="legacy")
    read = _tar_reader(path)
    manifest = json.loads(read("manifest.json"))
    assert [item["RepoTags"] for item in manifest] == [
        ["deltaimg/example:1.0"],
        ["deltaimg/example:2.0"],
        ["deltaimg/edge:1"],
    ]
    for item, image in zip(manifest, written):
        assert item["Config"] == _hex(image.config_digest) + ".json"
        assert _sha256(read(item["Config"])) == image.config_digest and image.path == path
        assert [_sha256(read(layer)) for layer in item["Layers"]] == image.diff_ids
        for layer in item["Layers"]:
            v1_id = layer.split("/")[0]
            assert read(f"{v1_id}/VERSION") == b"1.0" and json.loads(read(f"{v1_id}/json"))["id"] == v1_id
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]  # same chain: the same v1 directory
    edge_layers = manifest[2]["Layers"]
    assert edge_layers[2] != edge_layers[6] and _sha256(read(edge_layers[6])) == f.EMPTY_LAYER_DIFF_ID
    duplicate = _members(path)[edge_layers[6]]
    assert duplicate.issym() and duplicate.linkname == f"../{edge_layers[2]}"
    repositories = json.loads(read("repositories"))
    assert repositories["deltaimg/example"]["2.0"] == manifest[1]["Layers"][-1].split("/")[0]


def test_docker25_archive(tmp_path: Path, pair: f.ExamplePair, edge: f.ImageSpec) -> None:
    path = tmp_path / "docker25.tar"
    written = f.write_docker_archive(path, [pair.v1, edge], form="oci")
    read = _tar_reader(path)
    assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(read("index.json"))
    assert index["mediaType"] == f.MEDIA_TYPE_INDEX and len(index["manifests"]) == 2
    for descriptor, image in zip(index["manifests"], written):
        _check_oci_image(read, descriptor, image)
        layers = json.loads(read("blobs/sha256/" + _hex(descriptor["digest"])))["layers"]
        assert {layer["mediaType"] for layer in layers} == {f.MEDIA_TYPE_LAYER}
    assert index["manifests"][0]["annotations"] == {
        f.ANNOTATION_IMAGE_NAME: "docker.io/deltaimg/example:1.0",
        f.ANNOTATION_REF_NAME: "1.0",
    }
    manifest = json.loads(read("manifest.json"))
    for item, image in zip(manifest, written):
        assert item["Config"] == "blobs/sha256/" + _hex(image.config_digest)
        assert [_sha256(read(layer)) for layer in item["Layers"]] == image.diff_ids
    assert manifest[1]["Layers"][2] == manifest[1]["Layers"][6]  # the same layer twice, one blob
    referenced = {
        "blobs/sha256/" + _hex(digest)
        for image in written
        for digest in [image.config_digest, image.manifest_digest, *image.diff_ids]
    }
    blobs = [name for name in _members(path) if name.startswith("blobs/sha256/")]
    legacy_json = [json.loads(read(name)) for name in blobs if name not in referenced]
    assert len(legacy_json) == len(pair.v1.layers) + len(edge.layers) and all("id" in v1 for v1 in legacy_json)
    assert json.loads(read("repositories")) == {
        "deltaimg/edge": {"1": _hex(edge.layers[-1].diff_id)},
        "deltaimg/example": {"1.0": _hex(pair.v1.layers[-1].diff_id)},
    }


# --------------------------------------------------------------------------- OCI layouts


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("archive", [False, True])
def test_oci_layout(tmp_path: Path, pair: f.ExamplePair, compression: f.Compression, archive: bool) -> None:
    images = [pair.v1, pair.v2]
    if archive:
        path = tmp_path / "image.tar"
        written = f.write_oci_archive(path, images, compression=compression)
        read = _tar_reader(path)
        assert "oci-layout" in _members(path) and not any(n.startswith(".") for n in _members(path))
    else:
        path = tmp_path / "layout"
        written = f.write_oci_dir(path, images, compression=compression)
        read = _dir_reader(path)
    assert all(image.path == path for image in written)
    assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(read("index.json"))
    ref_names = [d["annotations"][f.ANNOTATION_REF_NAME] for d in index["manifests"]]
    assert ref_names == ["deltaimg/example:1.0", "deltaimg/example:2.0"]
    for descriptor, image in zip(index["manifests"], written):
        _check_oci_image(read, descriptor, image)
        layers = json.loads(read("blobs/sha256/" + _hex(descriptor["digest"])))["layers"]
        assert {layer["mediaType"] for layer in layers} == {f.LAYER_MEDIA_TYPES[compression]}


@pytest.mark.parametrize("archive", [False, True])
def test_oci_nested_platform_index(tmp_path: Path, edge: f.ImageSpec, archive: bool) -> None:
    amd64 = f.ImageSpec(layers=edge.layers[:2])
    arm64 = f.ImageSpec(layers=edge.layers[2:], config={"architecture": "arm64", "variant": "v8"})
    path = tmp_path / ("multi.tar" if archive else "multi")
    writer = f.write_oci_archive if archive else f.write_oci_dir
    written = writer(path, [amd64, arm64], compression="gzip", nested_index_ref="multi:1")
    read = _tar_reader(path) if archive else _dir_reader(path)
    (entry,) = json.loads(read("index.json"))["manifests"]
    assert entry["mediaType"] == f.MEDIA_TYPE_INDEX and entry["annotations"] == {f.ANNOTATION_REF_NAME: "multi:1"}
    nested_bytes = read("blobs/sha256/" + _hex(entry["digest"]))
    assert _sha256(nested_bytes) == entry["digest"]
    nested = json.loads(nested_bytes)["manifests"]
    assert [d["platform"] for d in nested] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert [image.platform for image in written] == ["linux/amd64", "linux/arm64/v8"]
    for descriptor, image in zip(nested, written):
        _check_oci_image(read, descriptor, image)


def test_oci_untagged_image_has_plain_entry(tmp_path: Path, edge: f.ImageSpec) -> None:
    (image,) = f.write_oci_dir(tmp_path / "layout", [f.ImageSpec(layers=edge.layers[:1])])
    (descriptor,) = json.loads((tmp_path / "layout" / "index.json").read_bytes())["manifests"]
    assert "annotations" not in descriptor and image.tags == []
    _check_oci_image(_dir_reader(tmp_path / "layout"), descriptor, image)
