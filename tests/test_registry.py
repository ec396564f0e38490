"""deltaimg apply --to docker://HOST/REPO:TAG against a real registry (Debian's docker-registry,
distribution 2.8) started on 127.0.0.1 by the fixtures: plain, with htpasswd Basic auth, with TLS.
(Token authentication, credential helpers and manifest lists: tests/test_registry_auth.py.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import run_cli
from tests.engine_helpers import EngineResources, _unavailable, free_port

BIG = 8 << 20  # the base's large layer, which the target takes whole
APP = 512 << 10  # the file the target changes


class RegistryService:
    def __init__(self, root, auth: str | None = None, tls: tuple[str, str] | None = None,
                 token: dict[str, str] | None = None) -> None:
        if not os.path.exists("/usr/bin/docker-registry"):
            _unavailable("docker-registry is missing (scripts/test installs it)")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        lines = ["version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
                 f"    rootdirectory: {root}/data", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.host}"]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if auth:
            lines += ["auth:", "  htpasswd:", "    realm: site", f"    path: {auth}"]
        if token:  # realm, service, issuer, rootcertbundle: distribution's token authentication
            lines += ["auth:", "  token:", *(f"    {key}: {value}" for key, value in token.items())]
        config = os.path.join(root, "config.yml")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n")
        self.process = subprocess.Popen(["/usr/bin/docker-registry", "serve", config],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scheme = "https" if tls else "http"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{scheme}://{self.host}/v2/", timeout=1, context=_no_verify() if tls else None)
                break
            except urllib.error.HTTPError:  # 401: up, and asking for credentials
                break
            except OSError:
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _no_verify():
    import ssl

    return ssl._create_unverified_context()


def skopeo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def pair(docker_client, keypair, tmp_path_factory):
    """v1 (busybox, an 8 MiB layer, a 512 KiB /app) and v2 (v1 and a layer where /app changed at
    its end), built by Docker; v1 as a docker save archive; the bundle v1 -> v2; v2 leaves the engine."""
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", [f"RUN head -c {BIG} /dev/urandom > /big", f"RUN head -c {APP} /dev/urandom > /app"])
    v2 = resources.build("v2", ["RUN echo v2 >> /app", "ENV VERSION=2"], base=v1)
    folder = tmp_path_factory.mktemp("registry-pair")
    tags = {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}
    archive = str(folder / "v1.tar")
    with open(archive, "wb") as out:
        for chunk in docker_client.api.get_image(tags["v1"]):
            out.write(chunk)
    bundle = str(folder / "v2.dimg")
    result = run_cli("make", f"docker-daemon:{tags['v1']}", f"docker-daemon:{tags['v2']}", "-o", bundle, "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    docker_client.api.remove_image(tags["v2"])
    yield {"v1": v1, "v2": v2, "repo": resources.name("v1"), "archive": archive, "bundle": bundle, "docker": docker_client}
    resources.cleanup()


@pytest.fixture
def registry(tmp_path):
    service = RegistryService(str(tmp_path))
    yield service
    service.stop()


def push_base(pair, host: str, repo: str, *creds: str) -> None:
    skopeo("copy", "--quiet", "--dest-tls-verify=false", *creds, f"docker-archive:{pair['archive']}",
           f"docker://{host}/{repo}:test")


def apply_to(pair, keypair, to: str, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("apply", pair["bundle"], "--trust", keypair[1], "--to", to, *options, "--json", env=env)


def test_the_target_is_rebuilt_from_the_base_in_the_registry_and_only_the_new_layer_is_pushed(registry, pair, keypair):
    push_base(pair, registry.host, pair["repo"])
    result = apply_to(pair, keypair, f"docker://{registry.host}/site/app:2")
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert (pushed["outcome"], pushed["image_id"], pushed["target"]) == ("pushed", pair["v2"], f"docker://{registry.host}/site/app:2")
    assert pushed["source"] == f"docker://{registry.host}/{pair['repo']}:test"  # --from's default
    assert (pushed["uploaded"], pushed["mounted"], pushed["present"]) == (1, 4, 0)  # the four base layers mounted, the new one uploaded
    assert APP < pushed["bytes_pushed"] < APP + (64 << 10) < BIG < pushed["image_bytes"]
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/site/app:2").stdout)
    assert inspected["config"]["digest"] == pair["v2"]
    client, tag = pair["docker"], f"{registry.host}/site/app:2"
    try:
        client.api.pull(tag)
        assert client.api.inspect_image(tag)["Id"] == pair["v2"]
    finally:
        client.api.remove_image(tag)
    again = apply_to(pair, keypair, f"docker://{registry.host}/site/app:2")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["outcome"], json.loads(again.stdout)["bytes_pushed"]) == ("already there", 0)


def test_a_base_the_registry_lacks_is_exit_31_on_one_line(registry, pair, keypair):
    result = apply_to(pair, keypair, f"docker://{registry.host}/site/app:2")
    assert result.returncode == 31
    assert result.stderr.count("\n") == 1
    assert f"the registry has no docker://{registry.host}/{pair['repo']}:test" in result.stderr
    unreachable = apply_to(pair, keypair, f"docker://127.0.0.1:{free_port()}/site/app:2")
    assert unreachable.returncode == 31 and "cannot reach the registry" in unreachable.stderr


def test_basic_auth_takes_the_docker_config_credentials_and_wrong_ones_are_exit_31(tmp_path, pair, keypair):
    htpasswd = str(tmp_path / "htpasswd")
    subprocess.run(["htpasswd", "-Bbc", htpasswd, "site", "s3cret"], check=True, capture_output=True)
    service = RegistryService(str(tmp_path), auth=htpasswd)
    try:
        push_base(pair, service.host, pair["repo"], "--dest-creds", "site:s3cret")
        for password, code in (("wrong", 31), ("s3cret", 0)):
            config = tmp_path / f"docker-{password}"
            config.mkdir()
            auth = base64.b64encode(f"site:{password}".encode()).decode()
            (config / "config.json").write_text(json.dumps({"auths": {service.host: {"auth": auth}}}))
            result = apply_to(pair, keypair, f"docker://{service.host}/site/app:2", env={"DOCKER_CONFIG": str(config)})
            assert result.returncode == code, result.stderr
        assert "refused the credentials of 'site'" in apply_to(
            pair, keypair, f"docker://{service.host}/other:2",
            env={"DOCKER_CONFIG": str(tmp_path / "docker-wrong")}).stderr
    finally:
        service.stop()


def self_signed(folder) -> tuple[str, str]:
    """(certificate, key) for 127.0.0.1, the certificate its own CA."""
    os.makedirs(folder, exist_ok=True)
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days",
                    "2", "-subj", "/CN=site", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def test_tls_with_the_ca_file_works_and_without_it_is_exit_31(tmp_path, pair, keypair):
    cert, key = self_signed(tmp_path)
    service = RegistryService(str(tmp_path), tls=(cert, key))
    try:
        push_base(pair, service.host, pair["repo"])
        plain = apply_to(pair, keypair, f"docker://{service.host}/site/app:2")
        assert plain.returncode == 31
        assert f"the registry {service.host} serves HTTPS: pass --ca-file" in plain.stderr
        other, _ = self_signed(tmp_path / "other")
        untrusted = apply_to(pair, keypair, f"docker://{service.host}/site/app:2", "--ca-file", other)
        assert untrusted.returncode == 31
        assert f"the registry {service.host}'s TLS certificate is not trusted" in untrusted.stderr
        result = apply_to(pair, keypair, f"docker://{service.host}/site/app:2", "--ca-file", cert)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["image_id"] == pair["v2"]
    finally:
        service.stop()


def test_wrong_registry_command_lines_are_exit_2(example_bundle, keypair):
    for options, message in (
            (["--to", "docker://app:2"], "--to takes docker://HOST[:PORT]/REPO[:TAG]"),
            (["--from", "docker://127.0.0.1:5000/app:1"], "--from and --ca-file go with --to"),
            (["--to", "docker://127.0.0.1:5000/app:2", "--dry-run"], "--dry-run cannot go with --to"),
            (["--to", "docker://127.0.0.1:5000/app:2", "--from", "docker://other.site/app:1"],
             "--from (other.site) must be on the registry of --to (127.0.0.1:5000)")):
        result = run_cli("apply", example_bundle, "--trust", keypair[1], *options)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
