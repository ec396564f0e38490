"""apply --to docker:// on a site: a manifest list as the base (the entry that is the bundle's base is
picked), the Swarm services on the base moved onto the pushed image by digest, and the push's record
in the journal and on the stick (receipts). Against the real registry (distribution 2.8) and, for
Swarm, a one-node swarm on this machine's engine."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.request

import docker

from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER
from tests.test_registry import apply_to, pair, push_base, registry  # noqa: F401
from tests.test_swarm import converge, swarm  # noqa: F401

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def http(host: str, method: str, path: str, body: bytes | None = None, media_type: str | None = None):
    request = urllib.request.Request(f"http://{host}{path}", data=body, method=method,
                                     headers={"Content-Type": media_type} if media_type else {})
    if method == "GET" and media_type:
        request.add_header("Accept", media_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def put_blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers, _ = http(host, "POST", f"/v2/{repo}/blobs/uploads/", b"")
    location = headers["Location"]
    location = location.split(host, 1)[-1]
    http(host, "PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", data, "application/octet-stream")
    return digest


def put_manifest(host: str, repo: str, reference: str, document: dict, media_type: str) -> dict:
    body = json.dumps(document).encode()
    http(host, "PUT", f"/v2/{repo}/manifests/{reference}", body, media_type)
    return {"mediaType": media_type, "size": len(body), "digest": "sha256:" + hashlib.sha256(body).hexdigest()}


def test_a_manifest_list_base_is_resolved_to_the_entry_that_is_the_bundles_base(registry, pair, keypair):  # noqa: F811
    host, repo = registry.host, pair["repo"]
    push_base(pair, host, repo)
    _, _, raw = http(host, "GET", f"/v2/{repo}/manifests/test", media_type=DOCKER_MANIFEST)
    base = {"mediaType": DOCKER_MANIFEST, "size": len(raw), "digest": "sha256:" + hashlib.sha256(raw).hexdigest()}
    manifest = json.loads(raw)
    _, _, config = http(host, "GET", f"/v2/{repo}/blobs/{manifest['config']['digest']}")
    arm = json.loads(config)
    arm["architecture"] = "arm64"  # another platform's image: same layers, another config
    arm_config = json.dumps(arm).encode()
    manifest["config"] = {**manifest["config"], "size": len(arm_config), "digest": put_blob(host, repo, arm_config)}
    other = put_manifest(host, repo, "arm64", manifest, DOCKER_MANIFEST)
    entries = [{**other, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
               {**base, "platform": {"os": "linux", "architecture": "amd64"}}]
    put_manifest(host, repo, "test", {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}, DOCKER_LIST)
    put_manifest(host, repo, "arm-only", {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries[:1]},
                 DOCKER_LIST)

    result = apply_to(pair, keypair, f"docker://{host}/site/app:2")  # --from: repo:test, the list
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert (pushed["image_id"], pushed["uploaded"], pushed["mounted"]) == (pair["v2"], 1, 4)

    refused = apply_to(pair, keypair, f"docker://{host}/site/app:3", "--from", f"docker://{host}/{repo}:arm-only")
    assert refused.returncode == 13
    assert refused.stderr.count("\n") == 1
    assert (f"docker://{host}/{repo}:arm-only is a manifest list of linux/arm64/v8, and none of them is this "
            "bundle's base sha256:") in refused.stderr
    wrong_platform = apply_to(pair, keypair, f"docker://{host}/site/app:3", "--platform", "linux/s390x")
    assert wrong_platform.returncode == 3
    assert f"docker://{host}/{repo}:test has no image for linux/s390x (it has linux/amd64, linux/arm64/v8)" \
        in wrong_platform.stderr


def test_on_a_swarm_manager_the_services_on_the_base_move_to_the_pushed_digest_and_the_push_is_recorded(
        swarm, registry, pair, keypair, tmp_path):  # noqa: F811
    client, host, repo = swarm, registry.host, pair["repo"]
    push_base(pair, host, repo)
    bundle = tmp_path / "stick" / "v2.dimg"
    bundle.parent.mkdir()
    shutil.copy(pair["bundle"], bundle)
    name = f"{repo}-svc"
    service = client.api.create_service(
        docker.types.TaskTemplate(docker.types.ContainerSpec(f"{host}/{repo}:test", command=["sh", "-c", SLEEP_FOREVER],
                                                             stop_grace_period=1_000_000_000)),
        name=name, mode=docker.types.ServiceMode("replicated", replicas=1),
        update_config=docker.types.UpdateConfig(parallelism=1, delay=0, monitor=1_000_000_000, failure_action="rollback"))["ID"]
    try:
        converge(client, service, pair["v1"], replicas=1)
        result = run_cli("apply", str(bundle), "--trust", keypair[1], "--to", f"docker://{host}/site/app:2", "--receipts",
                         "--json")
        assert result.returncode == 0, result.stderr
        pushed = json.loads(result.stdout)
        image = f"{host}/site/app:2@{pushed['digest']}"
        assert [(s["name"], s["outcome"]) for s in pushed["services"]] == [(name, "updated")]
        assert client.api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == image
        converge(client, service, pair["v2"], replicas=1)

        status = json.loads(run_cli("status", "--json").stdout)
        last = status["last_push"]
        assert (last["outcome"], last["registry"], last["digest"], last["to_image"], status["total_pushes"]) == (
            "pushed", f"docker://{host}/site/app:2", pushed["digest"], pair["v2"], 1)
        assert last["services"] == [{"name": name, "outcome": "updated"}]
        text = run_cli("status").stdout
        assert f"last registry push of 1: {last['time']}  pushed" in text
        assert f"docker://{host}/site/app:2@{pushed['digest']} {bundle}; Swarm services: {name} updated" in text

        written = sorted((bundle.parent / "receipts").iterdir())
        assert len(written) == 1
        receipt = json.loads(written[0].read_text())
        assert {k: receipt[k] for k in ("result", "exit_code", "message", "before", "after", "registry", "digest",
                                        "services")} == {
            "result": "applied", "exit_code": 0, "message": None, "before": pair["v1"], "after": pair["v2"],
            "registry": f"docker://{host}/site/app:2", "digest": pushed["digest"], "services": [name]}
        assert [(b["file"], b["result"], b["base"], b["target"]) for b in receipt["bundles"]] == [
            ("v2.dimg", "applied", pair["v1"], pair["v2"])]

        again = run_cli("apply", str(bundle), "--trust", keypair[1], "--to", f"docker://{host}/site/app:2", "--receipts",
                        "--no-swap", "--json")
        assert again.returncode == 0, again.stderr
        assert (json.loads(again.stdout)["outcome"], json.loads(again.stdout)["services"]) == ("already there", [])
        table = run_cli("receipts", str(bundle.parent), "--json")
        assert sorted(row["result"] for row in json.loads(table.stdout)["receipts"]) == ["applied", "up-to-date"]
    finally:
        client.api.remove_service(service)
        for _ in range(60):
            if not client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.id={service}"}):
                break
            time.sleep(0.5)
        for found in client.api.images():
            for reference in [*(found.get("RepoTags") or []), *(found.get("RepoDigests") or [])]:
                if reference.startswith(f"{host}/"):
                    try:
                        client.api.remove_image(reference)
                    except docker.errors.NotFound:
                        pass  # its other name removed it
