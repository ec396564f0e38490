"""Reading Docker's overlay2 store in place: the same bytes as ``docker save``, nothing trusted.

Each test copies one real image's records out of the running engine's store into a folder of its
own and points the adapter there (``docker info``'s DockerRootDir), so the store can be damaged
without touching the engine's.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import pytest

from deltaimg.engine.docker_store import chain_ids
from deltaimg.engine.dockerd import DockerEngine
from deltaimg.errors import EngineError, IntegrityError
from tests.engine_helpers import docker_client, engine_resources  # noqa: F401
from tests.test_engine import counting_exports


@dataclass
class CopiedStore:
    root: str
    image_id: str
    diff_ids: list[str]
    split: str  # the top layer's tar-split.json.gz
    diff: str  # the top layer's content directory

    def records(self) -> list[dict]:
        with gzip.open(self.split, "rt") as f:
            return [json.loads(line) for line in f]

    def write_records(self, records: list[dict] | list[str]) -> None:
        with gzip.open(self.split, "wt") as f:
            for record in records:
                f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


@pytest.fixture
def store(docker_client, engine_resources, tmp_path, monkeypatch) -> CopiedStore:
    image_id = engine_resources.build("store", ["RUN echo hello > /hello && mkdir /data && echo 12345 > /data/n"])
    info = docker_client.info()
    real = info["DockerRootDir"]
    diff_ids = docker_client.api.inspect_image(image_id)["RootFS"]["Layers"]
    root = tmp_path / "docker"
    images = root / "image" / "overlay2"
    (images / "imagedb" / "content" / "sha256").mkdir(parents=True)
    shutil.copy(os.path.join(real, "image/overlay2/imagedb/content/sha256", image_id.removeprefix("sha256:")),
                images / "imagedb" / "content" / "sha256")
    for chain in chain_ids(diff_ids):
        source = os.path.join(real, "image/overlay2/layerdb/sha256", chain.removeprefix("sha256:"))
        target = images / "layerdb" / "sha256" / chain.removeprefix("sha256:")
        target.mkdir(parents=True)
        for name in ("cache-id", "tar-split.json.gz"):
            shutil.copy(os.path.join(source, name), target / name)
        cache_id = (target / "cache-id").read_text()
        shutil.copytree(os.path.join(real, "overlay2", cache_id, "diff"), root / "overlay2" / cache_id / "diff", symlinks=True)
    monkeypatch.setattr(docker_client, "info", lambda: {**info, "DockerRootDir": str(root)})
    top = images / "layerdb" / "sha256" / chain_ids(diff_ids)[-1].removeprefix("sha256:")
    return CopiedStore(str(root), image_id, diff_ids, str(top / "tar-split.json.gz"),
                       str(root / "overlay2" / (top / "cache-id").read_text() / "diff"))


def read_layers(engine: DockerEngine, store: CopiedStore) -> dict[str, str]:
    return {d: "sha256:" + hashlib.sha256(s.read()).hexdigest()
            for d, s in engine.export_layers(store.image_id, set(store.diff_ids), {})}


def test_the_store_gives_the_config_and_every_layer_docker_save_gives_without_an_export(docker_client, store, monkeypatch):
    exports = counting_exports(monkeypatch, docker_client)
    engine = DockerEngine(docker_client)
    config = engine.read_config(store.image_id)
    assert "sha256:" + hashlib.sha256(config).hexdigest() == store.image_id
    assert read_layers(engine, store) == {d: d for d in store.diff_ids}
    assert exports == []


def test_a_layer_missing_from_the_store_is_read_through_docker_save(docker_client, store, monkeypatch):
    os.unlink(store.split)
    exports = counting_exports(monkeypatch, docker_client)
    assert read_layers(DockerEngine(docker_client), store) == {d: d for d in store.diff_ids}
    assert exports == [store.image_id] * 2  # without names learned before, a legacy export is read twice


def test_a_config_that_does_not_hash_to_its_id_is_read_through_docker_save(docker_client, store, monkeypatch):
    path = os.path.join(store.root, "image/overlay2/imagedb/content/sha256", store.image_id.removeprefix("sha256:"))
    with open(path, "ab") as f:
        f.write(b" ")
    exports = counting_exports(monkeypatch, docker_client)
    config = DockerEngine(docker_client).read_config(store.image_id)
    assert "sha256:" + hashlib.sha256(config).hexdigest() == store.image_id
    assert exports == [store.image_id]


def test_a_file_altered_in_the_store_is_refused_as_not_hashing_to_its_layer(docker_client, store):
    with open(os.path.join(store.diff, "hello"), "r+b") as f:
        f.write(b"J")  # same size: the tar reassembles, its digest does not
    with pytest.raises(IntegrityError) as caught:
        read_layers(DockerEngine(docker_client), store)
    assert str(caught.value) == (f"Docker's layer store gave layer {store.diff_ids[-1][:19]} of {store.image_id[:19]} "
                                 "bytes that do not hash to it; the store may be damaged (re-pull or reload the image)")


@pytest.mark.parametrize("damage, message", [
    ("outside", "tar-split names '../../../../etc/passwd', outside the layer's directory"),
    ("fifo", "{diff}/hello is not a regular file"),
    ("long line", "a tar-split record in {split} is longer than 1048576 bytes"),
    ("not json", "a tar-split record in {split} is not one: Expecting value: line 1 column 1 (char 0)"),
    ("bad name_raw", "a tar-split entry in {split} has a name_raw that is not base64"),
])
def test_a_store_record_that_does_not_reassemble_is_one_engine_error(docker_client, store, damage, message):
    records = store.records()
    entry = next(r for r in records if r.get("name") == "hello")
    if damage == "outside":
        entry["name"] = "../../../../etc/passwd"
    elif damage == "fifo":
        os.unlink(os.path.join(store.diff, "hello"))
        os.mkfifo(os.path.join(store.diff, "hello"))  # opening it for reading would wait for a writer forever
    elif damage == "long line":
        entry["name"] = "x" * (1 << 20)
    elif damage == "not json":
        records[records.index(entry)] = "}{"  # type: ignore[call-overload]
    else:
        entry["name_raw"] = "not base64!"
    store.write_records(records)
    with pytest.raises(EngineError) as caught:
        read_layers(DockerEngine(docker_client), store)
    assert str(caught.value) == ("Docker's layer store: " + message.format(diff=os.path.realpath(store.diff), split=store.split)
                                 + "; the store may be damaged (docker save of the image would fail the same way): "
                                   "re-pull or reload the image")


def test_a_name_given_raw_is_read_by_its_bytes(docker_client, store):
    records = store.records()
    entry = next(r for r in records if r.get("name") == "hello")
    entry["name_raw"] = base64.b64encode(b"hello").decode()
    entry["name"] = "ignored when name_raw is there"
    store.write_records(records)
    assert read_layers(DockerEngine(docker_client), store) == {d: d for d in store.diff_ids}


def test_the_store_is_not_read_when_told_not_to_or_on_another_driver(docker_client, store, monkeypatch):
    exports = counting_exports(monkeypatch, docker_client)
    assert read_layers(DockerEngine(docker_client, read_store=False), store) == {d: d for d in store.diff_ids}
    info = docker_client.info()
    monkeypatch.setattr(docker_client, "info", lambda: {**info, "Driver": "vfs"})
    assert read_layers(DockerEngine(docker_client), store) == {d: d for d in store.diff_ids}
    assert exports == [store.image_id] * 4


def test_a_tar_split_file_that_is_not_gzip_is_one_engine_error(docker_client, store):
    with open(store.split, "wb") as f:
        f.write(b"not gzip at all")
    with pytest.raises(EngineError) as caught:
        read_layers(DockerEngine(docker_client), store)
    assert str(caught.value).startswith(f"Docker's layer store: cannot reassemble a layer from {store.split}: ")
    assert str(caught.value).endswith("; the store may be damaged (docker save of the image would fail the same way): "
                                      "re-pull or reload the image")
