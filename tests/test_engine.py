"""The engine adapter and the docker-daemon: image source, against a real engine."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from deltaimg.engine.dockerd import DockerEngine
from deltaimg.engine import dockerd as engine
from deltaimg.errors import EngineError, IntegrityError
from deltaimg.images.daemon import open_daemon_image
from tests.engine_helpers import docker_client, engine_resources  # noqa: F401


@pytest.fixture(params=[True, False], ids=["store", "save"])
def read_store(request) -> bool:
    """Each engine read both ways: from Docker's overlay2 store in place (as root here) and through ``docker save``."""
    return request.param


def counting_exports(monkeypatch, client) -> list[str]:
    """The image IDs of every ``docker save`` the engine is asked for from now on."""
    exports: list[str] = []
    get_image = client.api.get_image

    def counted(image, *args, **kwargs):
        exports.append(image)
        return get_image(image, *args, **kwargs)

    monkeypatch.setattr(client.api, "get_image", counted)
    return exports


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def test_connect_reports_an_unreachable_engine_on_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(EngineError) as caught:
        engine.connect()
    assert "cannot reach the Docker engine" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_find_image(docker_client, engine_resources):
    image_id = engine_resources.build("find")
    assert DockerEngine(docker_client).find_image(image_id)["Id"] == image_id
    assert DockerEngine(docker_client).find_image(engine_resources.name("absent") + ":test") is None


def test_export_layers_streams_the_wanted_layers_and_read_config_the_exact_config(read_store, docker_client, engine_resources):
    image_id = engine_resources.build("save", ["RUN echo two > /two", "RUN echo three > /three"])
    diff_ids = DockerEngine(docker_client, read_store).find_image(image_id)["RootFS"]["Layers"]
    assert len(diff_ids) == 4
    names: dict[str, str] = {}
    read = [(d, "sha256:" + hashlib.sha256(s.read()).hexdigest())
            for d, s in DockerEngine(docker_client, read_store).export_layers(image_id, set(diff_ids), names)]
    assert sorted(d for d, _ in read) == sorted(diff_ids) and all(d == digest for d, digest in read)

    wanted = {diff_ids[0], diff_ids[2]}  # left unread: export_layers reads and checks them itself
    assert {d for d, _ in DockerEngine(docker_client, read_store).export_layers(image_id, wanted, names)} == wanted

    config_bytes = DockerEngine(docker_client, read_store).read_config(image_id)
    assert "sha256:" + hashlib.sha256(config_bytes).hexdigest() == image_id
    assert json.loads(config_bytes)["rootfs"]["diff_ids"] == diff_ids


def test_export_layers_refuses_a_layer_the_image_lacks(read_store, docker_client, engine_resources):
    image_id = engine_resources.build("lacks")
    with pytest.raises(IntegrityError, match="holds no layer hashing to sha256:0000"):
        list(DockerEngine(docker_client, read_store).export_layers(image_id, {"sha256:" + "0" * 64}, {}))


def thin_archive(path, config_bytes: bytes, diff_ids: list[str], present: dict[str, str], tag: str) -> None:
    """A docker-save archive listing every layer but holding only those in ``present``."""
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
    with tarfile.open(path, "w") as archive:
        for name, data in ((config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for diff_id, name in zip(diff_ids, layer_names):
            if diff_id in present:
                archive.add(present[diff_id], arcname=name)


def test_load_thin_archive_on_top_of_existing_base(docker_client, engine_resources, tmp_path):
    base_id = engine_resources.build("base")
    child_id = engine_resources.build("child", ["RUN echo v2 > /version"], base=base_id)
    child_tag = engine_resources.name("child") + ":test"
    diff_ids = DockerEngine(docker_client).find_image(child_id)["RootFS"]["Layers"]
    new_layer = diff_ids[-1]
    assert new_layer not in DockerEngine(docker_client).find_image(base_id)["RootFS"]["Layers"]
    archive = tmp_path / "thin.tar"
    with open_daemon_image(DockerEngine(docker_client), child_id, tmp_dir=str(tmp_path)) as child:
        child.fetch({new_layer})
        paths = {layer.diff_id: layer.local[0] for layer in child.layers if layer.local}
        assert set(paths) == {new_layer}
        thin_archive(archive, child.config_bytes, diff_ids, paths, child_tag)

    docker_client.api.remove_image(child_id, force=True)
    assert DockerEngine(docker_client).find_image(child_id) is None
    assert DockerEngine(docker_client).load_archive(archive) == [child_tag]
    assert DockerEngine(docker_client).find_image(child_tag)["Id"] == child_id

    # Once more from a stream, and re-tagged by ID.
    docker_client.api.remove_image(child_id, force=True)
    with open(archive, "rb") as stream:
        assert DockerEngine(docker_client).load_archive(stream) == [child_tag]
    other_tag = engine_resources.name("retag") + ":test"
    engine_resources.images.append(other_tag)
    DockerEngine(docker_client).tag(child_id, [other_tag])
    assert DockerEngine(docker_client).find_image(other_tag)["Id"] == child_id


def test_load_archive_without_its_base_fails_with_the_engine_message(docker_client, engine_resources, tmp_path):
    image_id = engine_resources.build("orphan")
    config = json.loads(DockerEngine(docker_client).read_config(image_id))
    config["rootfs"]["diff_ids"][0] = "sha256:" + "1" * 64  # a base layer no engine holds
    archive = tmp_path / "orphan.tar"
    thin_archive(archive, json.dumps(config).encode(), config["rootfs"]["diff_ids"], {}, "x:y")
    with pytest.raises(EngineError, match="docker load of .* failed: .*") as caught:
        DockerEngine(docker_client).load_archive(archive)
    assert "\n" not in str(caught.value)


def test_daemon_image_reads_config_and_layers_lazily(read_store, docker_client, engine_resources, tmp_path):
    image_id = engine_resources.build("daemon", ["RUN echo hello > /hello"])
    tag = engine_resources.name("daemon") + ":test"
    with open_daemon_image(DockerEngine(docker_client, read_store), tag, tmp_dir=str(tmp_path)) as image:
        assert image.config_digest == image_id
        assert image.tags == [tag]
        assert image.diff_ids == DockerEngine(docker_client, read_store).find_image(image_id)["RootFS"]["Layers"]
        assert [p for p in tmp_path.iterdir() if p.name.startswith("deltaimg-daemon-")] == []
        for layer in image.layers:
            with layer.open() as stream:
                assert "sha256:" + hashlib.sha256(stream.read()).hexdigest() == layer.diff_id
            assert sha256_file(layer.local[0]) == layer.diff_id
        workdir = os.path.dirname(image.layers[0].local[0])
    assert not os.path.exists(workdir)
    assert all(layer.local is None for layer in image.layers)


def test_make_from_the_engine_keeps_only_the_old_bytes_its_deltas_read(read_store, docker_client, engine_resources, keypair,
                                                                      tmp_path, monkeypatch):
    """The old image streams past twice (index, then the ranges the encoder reads, kept in sparse
    files); of the new image only the changed layer is exported to disk. The bundle still rebuilds
    the new image exactly."""
    import glob
    import tempfile

    from deltaimg.bundle import keys
    from deltaimg.images import open_image
    from deltaimg.make.build import make_bundle
    from deltaimg.delta.base_content import BaseContent
    from tests.conftest import run_cli

    base = engine_resources.build("keep-base", ["RUN head -c 8388608 /dev/urandom > /big"])
    old_id = engine_resources.build("keep-v1", ["RUN echo one > /app.txt"], base=base)
    new_id = engine_resources.build("keep-v2", ["RUN echo two two > /app.txt"], base=base)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    kept: list[int] = []
    fetch_entries = BaseContent.fetch_entries

    def measuring(self: BaseContent, references) -> None:
        fetch_entries(self, references)
        kept.append(sum(os.stat(p).st_blocks * 512 for p in glob.glob(f"{tmp_path}/deltaimg-make-*/base-layer-*")))

    monkeypatch.setattr(BaseContent, "fetch_entries", measuring)
    output = tmp_path / "app.dimg"
    exports = counting_exports(monkeypatch, docker_client)
    with open_daemon_image(DockerEngine(docker_client, read_store), old_id) as old, open_daemon_image(DockerEngine(docker_client, read_store), new_id) as new:
        make_bundle(old, new, str(output), keys.signing_key(keypair[0], None))
        assert all(layer.local is None for layer in old.layers)  # never exported to disk
        assert [layer.local is not None for layer in new.layers] == [d not in old.diff_ids for d in new.diff_ids]
    assert exports == ([] if read_store else [old_id, new_id, new_id, old_id, old_id, old_id])  # configs, the changed layer, index, ranges
    assert len(kept) == 1 and 0 < kept[0] <= 64 << 10, f"kept {kept} bytes of an 8 MiB old image"

    with open(tmp_path / "v1.tar", "wb") as out:
        for chunk in docker_client.images.get(old_id).save(named=False):
            out.write(chunk)
    result = run_cli("apply", str(output), "--trust", keypair[1], "--base", str(tmp_path / "v1.tar"),
                     "-o", str(tmp_path / "v2.tar"))
    assert result.returncode == 0, result.stderr
    assert open_image(str(tmp_path / "v2.tar")).config_digest == new_id


def test_apply_into_the_engine_keeps_only_the_base_bytes_its_deltas_read(read_store, docker_client, engine_resources, keypair,
                                                                         tmp_path, monkeypatch):
    """A fix to a small file that sits in a large base layer: apply keeps the file's entry as the
    layer streams past, a few KiB on disk, not the 8 MiB layer."""
    import glob

    from deltaimg.bundle import keys

    from deltaimg.bundle import signing
    from deltaimg.bundle.reader import open_bundle
    from deltaimg.apply.engine import apply_to_engine
    from deltaimg.make.build import make_bundle
    from deltaimg.delta.base_content import BaseContent

    base = engine_resources.build("fix-base", ["RUN head -c 8388608 /dev/urandom > /big && echo hello > /small"])
    v1 = engine_resources.build("fix-v1", ["RUN echo one > /app.txt"], base=base)
    v2 = engine_resources.build("fix-v2", ["RUN echo hello world > /small"], base=v1)
    output = tmp_path / "fix.dimg"
    with open_daemon_image(DockerEngine(docker_client, read_store), v1) as old, open_daemon_image(DockerEngine(docker_client, read_store), v2) as new:
        make_bundle(old, new, str(output), keys.signing_key(keypair[0], None))
    docker_client.api.remove_image(engine_resources.name("fix-v2") + ":test")
    assert DockerEngine(docker_client, read_store).find_image(v2) is None

    kept: list[int] = []
    fetch_entries = BaseContent.fetch_entries

    def measuring(self: BaseContent, references) -> None:
        fetch_entries(self, references)
        kept.append(sum(os.stat(p).st_blocks * 512 for p in glob.glob(f"{tmp_path}/work/**", recursive=True)
                        if os.path.isfile(p)))

    monkeypatch.setattr(BaseContent, "fetch_entries", measuring)
    (tmp_path / "work").mkdir()
    bundle = open_bundle(str(output), [signing.load_public(keypair[1])])
    exports = counting_exports(monkeypatch, docker_client)
    outcome = apply_to_engine(bundle, DockerEngine(docker_client, read_store), containers=None, swap_containers=False, grace=1, dry_run=False,
                              log=lambda line: None, work_dir=str(tmp_path / "work"))
    assert outcome.image_id == v2 and DockerEngine(docker_client, read_store).find_image(v2)["Id"] == v2
    assert exports == ([] if read_store else [v1, v1])
    if read_store:  # the store's layer is read in place: nothing is copied
        assert kept == [0], f"kept {kept} bytes of an 8 MiB base layer"
    else:
        assert len(kept) == 1 and 0 < kept[0] <= 64 << 10, f"kept {kept} bytes of an 8 MiB base layer"
    assert list((tmp_path / "work").iterdir()) == []


def test_an_export_the_engine_fails_to_start_is_one_engine_error():
    """The engine going away between two exports: an EngineError naming docker save, no traceback."""
    import types

    import requests

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("Connection refused")

    client = types.SimpleNamespace(api=types.SimpleNamespace(get_image=refuse))
    with pytest.raises(EngineError, match="^docker save of sha256:abc failed: Connection refused$"):
        list(DockerEngine(client).export_layers("sha256:abc", {"sha256:" + "0" * 64}, {}))
