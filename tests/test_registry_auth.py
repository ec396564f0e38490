"""deltaimg apply --to against a real registry (distribution 2.8) that authenticates with Bearer
tokens: its ``auth: token:`` trusts a self-signed certificate whose key signs the tokens (ES256, the
certificate in the token's ``x5c`` header, as distribution's registry/auth/token verifies it), and
the realm is the small token server below, run by the test on 127.0.0.1. Also: credentials from a
credential helper (``docker-credential-test``, a script on PATH speaking the helper protocol)."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.engine_helpers import free_port
from tests.test_registry import APP, BIG, RegistryService, apply_to, pair, push_base, self_signed, skopeo  # noqa: F401

SERVICE = "site-registry"
ISSUER = "site-token-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token server for distribution: Basic credentials in, a signed JWT granting the scopes the
    account may have out. ``grants`` maps a user to {repository: actions}; with ``one_repository``
    a token grants only the first repository asked for, as a token server that scopes each token to
    one repository does (a cross-repository mount then lacks pull on its source)."""

    def __init__(self, cert: str, key: str, users: dict[str, str], grants: dict[str, dict[str, set[str]]]) -> None:
        with open(cert, "rb") as f:
            self.chain = [base64.b64encode(x509.load_pem_x509_certificate(f.read()).public_bytes(
                serialization.Encoding.DER)).decode()]
        with open(key, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)
        self.users, self.grants, self.one_repository = users, grants, False
        self.asked: list[tuple[str | None, list[str]]] = []  # (user, scopes) of every token request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def answer(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        user = None
        if authorization and authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return 401, b'{"details": "wrong user name or password"}'
            user = name
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        self.asked.append((user, scopes))
        access: list[dict] = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            if self.one_repository and access and access[0]["name"] != name:
                continue
            allowed = sorted(set(actions.split(",")) & self.grants.get(user or "", {}).get(name, set()))
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": query.get("service", [""])[0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        header = {"typ": "JWT", "alg": "ES256", "x5c": self.chain}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        return 200, json.dumps({"token": token, "expires_in": 300}).encode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def token_registry(pair, tmp_path_factory):  # noqa: F811
    """A registry with token authentication, the base pushed into it by skopeo with the site's credentials."""
    folder = tmp_path_factory.mktemp("token-registry")
    cert, key = self_signed(folder / "signing")
    grants = {"site": {pair["repo"]: {"pull", "push"}, "site/app": {"pull", "push"}, "site/helper": {"pull", "push"},
                       "site/copy": {"pull", "push"}}}
    tokens = TokenServer(cert, key, {"site": "s3cret"}, grants)
    service = RegistryService(str(folder), token={"realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
                                                  "rootcertbundle": cert})
    try:
        push_base(pair, service.host, pair["repo"], "--dest-creds", "site:s3cret")
        yield service, tokens, folder
    finally:
        service.stop()
        tokens.stop()


def docker_config(folder, name: str, config: dict) -> dict:
    """The environment of a run whose Docker config file holds ``config``."""
    path = folder / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(path)}


def logged_in(host: str, user: str, password: str) -> dict:
    return {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


def sorted_actions(scope: str) -> str:
    """A scope with its actions sorted (distribution's challenge names them in no fixed order)."""
    kind, name, actions = scope.split(":")
    return f"{kind}:{name}:{','.join(sorted(actions.split(',')))}"


def test_bearer_tokens_are_asked_with_basic_credentials_for_each_repository_scope(token_registry, pair, keypair):
    service, tokens, folder = token_registry
    del tokens.asked[:]
    wrong = apply_to(pair, keypair, f"docker://{service.host}/site/app:2",
                     env=docker_config(folder, "wrong", logged_in(service.host, "site", "nope")))
    assert wrong.returncode == 31
    assert f"the registry {service.host} refused the credentials of 'site' from " in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    del tokens.asked[:]
    result = apply_to(pair, keypair, f"docker://{service.host}/site/app:2",
                      env=docker_config(folder, "right", logged_in(service.host, "site", "s3cret")))
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert (pushed["image_id"], pushed["uploaded"], pushed["mounted"], pushed["present"]) == (pair["v2"], 1, 4, 0)
    assert APP < pushed["bytes_pushed"] < APP + (64 << 10)
    base, target = f"repository:{pair['repo']}:pull", "repository:site/app:pull,push"
    asked = {tuple(sorted(map(sorted_actions, scopes))) for _, scopes in tokens.asked}
    # each request's own scope, as the registry's challenge names it: reading the base, reading the
    # target's tag, writing the target, and the mount, which needs pull on the base too
    assert asked == {(base,), ("repository:site/app:pull",), (target,), tuple(sorted((target, base)))}
    assert {user for user, _ in tokens.asked} == {"site"}  # the Docker config's credentials, as Basic
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "site:s3cret", "--raw",
                                  f"docker://{service.host}/site/app:2").stdout)
    assert inspected["config"]["digest"] == pair["v2"]


def test_a_mount_the_token_does_not_cover_is_an_upload_copied_from_the_base(token_registry, pair, keypair):
    service, tokens, folder = token_registry
    tokens.one_repository = True  # the mount's token gets push on the target but not pull on the base
    del tokens.asked[:]
    try:
        result = apply_to(pair, keypair, f"docker://{service.host}/site/copy:2",
                          env=docker_config(folder, "right", logged_in(service.host, "site", "s3cret")))
    finally:
        tokens.one_repository = False
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert (pushed["image_id"], pushed["uploaded"], pushed["mounted"]) == (pair["v2"], 5, 0)  # 4 copied, 1 rebuilt
    assert BIG < pushed["bytes_pushed"] < pushed["image_bytes"] + 1
    mounts = [scopes for _, scopes in tokens.asked if len(scopes) == 2]
    assert len(mounts) == 4  # each base layer's mount was asked for, refused, and the layer uploaded instead
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "site:s3cret", "--raw",
                                  f"docker://{service.host}/site/copy:2").stdout)
    assert inspected["config"]["digest"] == pair["v2"]


HELPER = """#!/bin/sh
# docker-credential-test: the credential helper protocol (get: server on stdin, JSON on stdout)
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "{log}"
[ -n "$HELPER_FLOOD" ] && {{ head -c 100000 /dev/zero | tr '\\0' x; exit 0; }}
case "$server" in
  "{host}") printf '{{"ServerURL": "%s", "Username": "site", "Secret": "s3cret"}}' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def test_credentials_come_from_the_credential_helper_the_docker_config_names(token_registry, pair, keypair, tmp_path):
    service, _, folder = token_registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    helper = bin_dir / "docker-credential-test"
    helper.write_text(HELPER.format(log=log, host=service.host))
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    for name, config in (("helpers", {"credHelpers": {service.host: "test"}}),
                         ("store", {"credsStore": "test", "auths": {service.host: {}}})):
        result = apply_to(pair, keypair, f"docker://{service.host}/site/helper:2",
                          env={**path, **docker_config(tmp_path, name, config)})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["image_id"] == pair["v2"]
    assert log.read_text().splitlines()[:2] == [service.host, service.host]  # the server, on standard input

    missing = apply_to(pair, keypair, f"docker://{service.host}/site/helper:3",
                       env=docker_config(tmp_path, "absent", {"credsStore": "absent"}))
    assert missing.returncode == 31
    assert "cannot run the credential helper docker-credential-absent that the Docker config file" in missing.stderr
    flood = apply_to(pair, keypair, f"docker://{service.host}/site/helper:3",
                     env={**path, "HELPER_FLOOD": "1", **docker_config(tmp_path, "store", {"credsStore": "test"})})
    assert flood.returncode == 31
    assert "the credential helper docker-credential-test answered more than 65536 bytes" in flood.stderr
    # a helper holding nothing for this registry: no credentials, so the registry's refusal says to log in
    helper_for_other = HELPER.format(log=log, host="other.site:5000")
    (bin_dir / "docker-credential-test").write_text(helper_for_other)
    nothing = apply_to(pair, keypair, f"docker://{service.host}/site/helper:3",
                       env={**path, **docker_config(tmp_path, "store", {"credsStore": "test"})})
    assert nothing.returncode == 31
    assert f"the registry {service.host} needs credentials: run docker login {service.host}" in nothing.stderr
    assert nothing.stderr.count("\n") == 1
