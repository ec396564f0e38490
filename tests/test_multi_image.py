"""Several images in one bundle: made once (a layer both targets add shipped once), shown whole by
inspect and verify, applied into a real engine as one update (every base checked first, both
targets loaded, every container of both bases swapped in one set, all or nothing), and rebuilt
into one archive from several --base."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources

CMD = ["sh", "-c", SLEEP_FOREVER]
SHARED_BYTES = 300_000  # the layer both targets add: random, so its payload is about this size
GOLDEN = Path(__file__).resolve().parent.parent / "bundles" / "v3"


@pytest.fixture(scope="module")
def images(docker_client):
    """app and worker, each on a base of its own; both targets add the same layer (/shared,
    copied from one image, so byte for byte the same) and a file of their own."""
    res = EngineResources(docker_client)
    seed = res.build("seed", [f"RUN head -c {SHARED_BYTES} /dev/urandom > /shared"])
    ids = {"seed": seed,
           "app1": res.build("app1", ["RUN echo app1 > /version", f"CMD {json.dumps(CMD)}"]),
           "worker1": res.build("worker1", ["RUN echo worker1 > /version", f"CMD {json.dumps(CMD)}"])}
    copy = f"COPY --from={res.name('seed')}:test /shared /shared"
    ids["app2"] = res.build("app2", [copy, "RUN echo app2 > /version"], base=f"{res.name('app1')}:test")
    ids["worker2"] = res.build("worker2", [copy, "RUN echo worker2 > /version"], base=f"{res.name('worker1')}:test")
    ids["workerbad"] = res.build("workerbad", [copy, "RUN echo bad > /version",
                                               'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["false"]'],
                                 base=f"{res.name('worker1')}:test")
    yield {"id": ids, "tag": {k: f"{res.name(k)}:test" for k in ids}, "res": res}
    res.cleanup()


def make(images, tmp_path_factory, keypair, *names: str) -> str:
    out = str(tmp_path_factory.mktemp("bundles") / "app.dimg")
    result = run_cli("make", *(f"docker-daemon:{images['tag'][n]}" for n in names), "-o", out, "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def bundles(images, keypair, tmp_path_factory) -> dict[str, str]:
    """Made from the engine's images before any test removes a target."""
    return {"good": make(images, tmp_path_factory, keypair, "app1", "app2", "worker1", "worker2"),
            "bad": make(images, tmp_path_factory, keypair, "app1", "app2", "worker1", "workerbad")}


def remove_targets(client, images, *names: str) -> None:
    """The edge host does not have the new images yet."""
    for name in names:
        if client.api.images(filters={"reference": images["tag"][name]}):
            client.api.remove_image(images["tag"][name])


def container(client, res: EngineResources, tag: str, suffix: str) -> str:
    created = client.api.create_container(tag, name=res.name(suffix))["Id"]
    client.api.start(created)
    return created


def test_a_layer_both_targets_add_is_shipped_once_and_inspect_and_verify_show_both_images(images, bundles, keypair):
    inspected = run_cli("inspect", bundles["good"], "--trust", keypair[1], "--json")
    assert inspected.returncode == 0, inspected.stderr
    data = json.loads(inspected.stdout)
    assert data["version"] == 3
    ids = images["id"]
    assert [(i["base"]["image_id"], i["target"]["image_id"]) for i in data["images"]] == [
        (ids["app1"], ids["app2"]), (ids["worker1"], ids["worker2"])]
    assert [i["target"]["tags"] for i in data["images"]] == [[images["tag"]["app2"]], [images["tag"]["worker2"]]]
    app, worker = (i["layers"] for i in data["images"])
    new_in_app = [layer["method"] for layer in app[-2:]]
    assert new_in_app == ["delta", "delta"]  # /shared, then /version
    assert worker[-2]["method"] == "shared" and (worker[-2]["image"], worker[-2]["of"]) == (0, len(app) - 2)
    assert worker[-1]["method"] == "delta"
    # three layer payloads (the shared layer once, each /version) and two configs; /shared in one payload
    names = sorted(p["name"] for p in data["payloads"])
    assert names == sorted(["config", "config-1", f"layer-{len(app) - 2}", f"layer-{len(app) - 1}",
                            f"layer-1-{len(worker) - 1}"])
    big = [p for p in data["payloads"] if p["size"] > SHARED_BYTES // 2]
    assert len(big) == 1 and big[0]["name"] == f"layer-{len(app) - 2}"
    assert data["size"] < SHARED_BYTES * 1.5

    text = run_cli("inspect", bundles["good"]).stdout
    assert "2 images, applied together as one update:" in text
    assert f"shared: same as layer {len(app) - 2} of image 0, shipped once" in text
    verified = run_cli("verify", bundles["good"], "--trust", keypair[1], "--json")
    assert verified.returncode == 0
    assert [i["target"]["image_id"] for i in json.loads(verified.stdout)["images"]] == [ids["app2"], ids["worker2"]]


def test_apply_loads_both_targets_and_swaps_the_containers_of_both_bases_in_one_set(
        docker_client, engine_resources, images, bundles, keypair, state_dir):
    client, res = docker_client, engine_resources
    remove_targets(client, images, "app2", "worker2")
    app = container(client, res, images["tag"]["app1"], "app")
    worker = container(client, res, images["tag"]["worker1"], "worker")

    result = run_cli("apply", bundles["good"], "--trust", keypair[1], "--grace", "1", "--json")

    assert result.returncode == 0, result.stderr
    ids = images["id"]
    for name in ("app2", "worker2"):
        assert client.api.inspect_image(images["tag"][name])["Id"] == ids[name]
    for suffix, target in (("app", "app2"), ("worker", "worker2")):
        info = client.api.inspect_container(res.name(suffix))
        assert (info["Image"], info["Config"]["Image"], info["State"]["Status"]) == (
            ids[target], images["tag"][target], "running")
    assert {c["Id"] for c in res.containers()}.isdisjoint({app, worker})  # the old ones are gone
    report = json.loads(result.stdout)
    assert [o["event"] for o in report["outcomes"]] == ["applied"]
    assert sorted(c["name"] for c in report["outcomes"][0]["containers"]) == [res.name("app"), res.name("worker")]
    records = [json.loads(line) for line in open(Path(state_dir) / "journal.jsonl")]
    swaps = [r for r in records if r["type"] == "swap"]
    assert len(swaps) == 1  # one set, journalled whole: recovery settles both
    assert [(c["name"], c["image"]) for c in swaps[0]["containers"]] == [
        (res.name("app"), ids["app2"]), (res.name("worker"), ids["worker2"])]
    begin = next(r for r in records if r["type"] == "begin")
    assert [(i["from"]["image_id"], i["to"]["image_id"]) for i in begin["images"]] == [
        (ids["app1"], ids["app2"]), (ids["worker1"], ids["worker2"])]


def test_a_failing_health_check_on_the_second_image_puts_the_first_images_container_back_too(
        docker_client, engine_resources, images, bundles, keypair):
    client, res = docker_client, engine_resources
    app = container(client, res, images["tag"]["app1"], "app")  # older: swapped first
    worker = container(client, res, images["tag"]["worker1"], "worker")

    result = run_cli("apply", bundles["bad"], "--trust", keypair[1], "--grace", "1")

    assert result.returncode == 21, result.stderr
    assert f"rolled back too: {res.name('app')}" in result.stderr
    for suffix, old, base in (("app", app, "app1"), ("worker", worker, "worker1")):
        info = client.api.inspect_container(res.name(suffix))
        assert (info["Id"], info["Image"], info["State"]["Status"]) == (old, images["id"][base], "running")
    assert sorted(c["Name"].lstrip("/") for c in res.containers()) == [res.name("app"), res.name("worker")]
    status = json.loads(run_cli("status", "--json").stdout)["attempts"][-1]
    assert status["outcome"] == "rolled-back"
    assert status["from"] == f"{images['tag']['app1']} {images['id']['app1'][:19]}, " \
                             f"{images['tag']['worker1']} {images['id']['worker1'][:19]}"


def test_a_host_without_the_second_base_is_refused_before_anything_is_loaded(
        docker_client, engine_resources, images, keypair, example_pair, tmp_path):
    client, res = docker_client, engine_resources
    bundle = str(tmp_path / "app.dimg")
    made = run_cli("make", f"docker-daemon:{images['tag']['app1']}", f"docker-daemon:{images['tag']['app2']}",
                   *example_pair, "-o", bundle, "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    remove_targets(client, images, "app2")
    app = container(client, res, images["tag"]["app1"], "app")

    result = run_cli("apply", bundle, "--trust", keypair[1])

    assert result.returncode == 15
    assert result.stderr.count("\n") == 1
    assert "example/app:1.0" in result.stderr and "but this engine lacks" in result.stderr
    assert client.api.images(filters={"reference": images["tag"]["app2"]}) == []
    assert client.api.inspect_container(res.name("app"))["Id"] == app


def test_an_odd_number_of_images_is_a_usage_error(tmp_path, keypair):
    result = run_cli("make", "a.tar", "b.tar", "c.tar", "-o", str(tmp_path / "x.dimg"), "--key", keypair[0])
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("deltaimg: error: make takes images in pairs, BASE TARGET [BASE TARGET ...]; 3 given, "
                             "so c.tar has no target\n")


def test_archive_apply_rebuilds_the_target_of_every_base_given_into_one_archive(tmp_path):
    key = str(GOLDEN / "key.pub")
    out = tmp_path / "both.tar"
    result = run_cli("apply", str(GOLDEN / "bundle.dimg"), "--trust", key, "--base", str(GOLDEN / "base.tar"),
                     "--base", str(GOLDEN / "base-2.tar"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with tarfile.open(out) as rebuilt:
        entries = json.load(rebuilt.extractfile("manifest.json"))
        configs = [rebuilt.extractfile(entry["Config"]).read() for entry in entries]
        layer_files = [name for name in rebuilt.getnames() if name.endswith("/layer.tar")]
    expected = []
    for name in ("target.tar", "target-2.tar"):
        with tarfile.open(GOLDEN / name) as target:
            entry, = json.load(target.extractfile("manifest.json"))
            expected.append(target.extractfile(entry["Config"]).read())
    assert configs == expected
    assert [entry["RepoTags"] for entry in entries] == [["golden:1.1"], ["golden-worker:1.1"]]
    assert len(layer_files) == len(set(layer_files)) == 3  # the layer both targets have is written once

    wrong = run_cli("apply", str(GOLDEN / "bundle.dimg"), "--trust", key, "--base", str(GOLDEN / "base-2.tar"),
                    "-o", str(tmp_path / "worker.tar"))
    assert wrong.returncode == 13, wrong.stderr
    assert "shares a layer with golden:1.1" in wrong.stderr and "give that base too (--base)" in wrong.stderr


def test_a_bundle_of_several_images_in_a_folder_is_refused_with_how_to_apply_it(tmp_path, keypair, docker_client):
    folder = tmp_path / "stick"
    folder.mkdir()
    (folder / "app.dimg").write_bytes((GOLDEN / "bundle.dimg").read_bytes())
    result = run_cli("apply", str(folder), "--trust", str(GOLDEN / "key.pub"), "--dry-run")
    assert result.returncode == 2
    assert result.stderr == (f"deltaimg: error: {folder}/app.dimg updates 2 images as one update, which is applied "
                             "only when named alone: deltaimg apply BUNDLE (not a folder or a list)\n")
