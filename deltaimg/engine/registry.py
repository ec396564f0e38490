"""A registry's HTTP API (distribution's ``/v2/``), through the standard library's http.client.

Plain HTTP only to a registry on this host (``localhost``, ``127.0.0.1``, ``::1``) and only
without ``--ca-file``; anywhere else TLS, verified against the system's CAs or ``--ca-file``.
Credentials come from the Docker config file (:mod:`deltaimg.engine.docker_config`: its
``auths``, or the credential helper it names), sent as Basic auth or traded for a Bearer token at
the realm the registry's challenge names. A token is asked for the scope each request needs (pull
on the repository read, pull and push on the one written, and pull on the one a blob is mounted
from), as the registry's challenge names it, and kept for the next request of that scope. Every
request has a timeout; every answer read into memory is capped (manifests and configs a few MiB,
error and token answers 64 KiB).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable

from deltaimg import __version__
from deltaimg.engine.docker_config import credentials, docker_config_path
from deltaimg.errors import RegistryError
from deltaimg.safejson import load_json

TIMEOUT = 60.0
MAX_DOCUMENT = 4 << 20  # a manifest, an index, an image config
MAX_SMALL = 64 << 10  # an error answer, a token
MAX_TOKENS = 64  # tokens kept, one per scope asked: a push asks for three or four
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_LIST, OCI_INDEX)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_API_PATH = re.compile(r"/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")
_REFERENCE = re.compile(rf"docker://(?P<host>[^/@]+)/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
                        r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")


@dataclass(frozen=True)
class RegistryRef:
    host: str  # HOST[:PORT]
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What ``/v2/REPO/manifests/...`` takes: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"docker://{self.host}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.reference}")


def parse_reference(text: str, option: str) -> RegistryRef:
    """``docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``, the host named (a site registry has no default)."""
    match = _REFERENCE.fullmatch(text)
    if not match or not _looks_like_host(match["host"]):
        from deltaimg.errors import UsageError

        raise UsageError(f"{option} takes docker://HOST[:PORT]/REPO[:TAG] (e.g. docker://registry.site:5000/app:1.1), "
                         f"not {text!r}")
    return RegistryRef(match["host"], match["repo"], match["tag"], match["digest"])


def _looks_like_host(host: str) -> bool:
    return "." in host or ":" in host or host == "localhost"


def hostname(host: str) -> str:
    """``HOST`` of ``HOST[:PORT]`` (``[::1]:5000`` gives ``::1``)."""
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Stream(io.RawIOBase):
    """A response body whose network failures are :class:`RegistryError`."""

    def __init__(self, response: http.client.HTTPResponse, what: str) -> None:
        self._response = response
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            return self._response.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"the registry stopped sending {self._what}: {exc}; run again") from None

    def close(self) -> None:
        self._response.close()
        super().close()


class Registry:
    """One registry host."""

    def __init__(self, host: str, ca_file: str | None = None) -> None:
        self.host = host
        self.secure = ca_file is not None or hostname(host) not in LOCAL_HOSTS
        self._context: ssl.SSLContext | None = None
        if self.secure:
            try:
                self._context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"cannot read the CA file {ca_file}: {exc}; give a PEM file of CA certificates") from None
        self._credentials = credentials(host)
        self._basic: str | None = None  # once the registry asked for Basic auth
        self._tokens: dict[str, str] = {}  # the scope a request needs -> "Bearer ..." for it

    # -- requests ---------------------------------------------------------------------------
    def _connect(self, netloc: str, secure: bool) -> http.client.HTTPConnection:
        if secure:
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=self._context, blocksize=1 << 20)
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT, blocksize=1 << 20)

    def _send(self, method: str, url: str, headers: dict, body: bytes | BinaryIO | None) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(url)
        netloc, secure = (parts.netloc, parts.scheme == "https") if parts.netloc else (self.host, self.secure)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = self._connect(netloc, secure)
        try:
            connection.request(method, path, body=body, headers=headers)
            return connection.getresponse()
        except ssl.SSLCertVerificationError as exc:
            raise RegistryError(f"the registry {netloc}'s TLS certificate is not trusted ({exc.verify_message}); pass "
                                "--ca-file with the CA certificate that signed it") from None
        except ssl.SSLError as exc:
            raise RegistryError(f"cannot talk TLS to the registry {netloc} ({exc.reason}); check the address and port") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise RegistryError(f"cannot reach the registry {netloc}: {reason}; check the address and that it runs") from None

    def request(self, method: str, path: str, headers: dict | None = None,
                body: bytes | Callable[[], BinaryIO] | None = None,
                refusable: bool = False) -> http.client.HTTPResponse:
        """Send, answering one authentication challenge; the caller checks the status. With
        ``refusable``, a request still refused after authenticating (its token lacks a scope the
        account may not have) is returned as its 401 answer rather than raised."""
        scope = needed_scope(method, path)
        for attempt in (1, 2):
            sent = {"User-Agent": f"deltaimg/{__version__}", **(headers or {})}
            authorization = self._basic or self._tokens.get(scope)
            if authorization:
                sent["Authorization"] = authorization
            response = self._send(method, path, sent, body() if callable(body) else body)
            if response.status != 401:
                return response
            challenge = response.getheader("WWW-Authenticate") or ""
            if attempt == 2 and refusable:
                return response
            _read_capped(response, MAX_SMALL)
            if attempt == 2 or not challenge:
                break
            self._authenticate(challenge, scope)
        if self._credentials is None:
            raise RegistryError(f"the registry {self.host} needs credentials: run docker login {self.host} "
                                f"(deltaimg reads {docker_config_path()})")
        raise RegistryError(f"the registry {self.host} refused the credentials of {self._credentials[0]!r} from "
                            f"{docker_config_path()}{f' for {scope}' if self._tokens else ''}: run docker login "
                            f"{self.host} again, or grant the account that access")

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        basic = None
        if self._credentials is not None:
            basic = "Basic " + base64.b64encode(":".join(self._credentials).encode()).decode()
        if scheme == "basic":
            self._basic = basic
            return
        realm = params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if scheme != "bearer" or parts.scheme not in ("https", "http") or \
                (parts.scheme == "http" and hostname(parts.netloc) not in LOCAL_HOSTS):
            raise RegistryError(f"the registry {self.host} asks for authentication deltaimg cannot give "
                                f"({challenge[:200]!r}); use Basic auth or a token server over https")
        scopes = list(dict.fromkeys(s for s in (params.get("scope") or scope).split(" ") if s))
        query = urllib.parse.urlencode([("service", params.get("service", ""))] + [("scope", s) for s in scopes])
        response = self._send("GET", f"{realm}{'&' if parts.query else '?'}{query}",
                              {"Authorization": basic} if basic else {}, None)
        body = _read_capped(response, MAX_SMALL)
        if response.status == 401 or response.status == 403:
            self._tokens.pop(scope, None)
            return  # the request is sent again without a token, and its 401 says what to do
        answer = load_json(body, f"the token server {parts.netloc}'s answer", "a token answer does", RegistryError) \
            if response.status == 200 else None
        token = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token server {parts.netloc} answered {response.status} without a token")
        if len(self._tokens) >= MAX_TOKENS:
            self._tokens.clear()
        self._tokens[scope] = f"Bearer {token}"

    def _fail(self, response: http.client.HTTPResponse, what: str) -> RegistryError:
        body = _read_capped(response, MAX_SMALL)
        if response.status == 400 and not self.secure and b"HTTPS" in body:
            return RegistryError(f"the registry {self.host} serves HTTPS: pass --ca-file with the CA certificate that "
                                 "signed its certificate (plain HTTP is only for this host, without --ca-file)")
        detail = ""
        try:
            errors = json.loads(body).get("errors") or []
            detail = f": {errors[0].get('code')} {errors[0].get('message')}"
        except (ValueError, AttributeError, IndexError, TypeError):
            pass
        hint = "; the account lacks the permission" if response.status == 403 else ""
        return RegistryError(f"the registry {self.host} refused to {what} ({response.status} {response.reason}{detail}){hint}")

    # -- the API ----------------------------------------------------------------------------
    def manifest(self, repository: str, reference: str) -> tuple[str, bytes] | None:
        """(media type, exact bytes) of a manifest or index; None when the registry has none there."""
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status == 404:
            _read_capped(response, MAX_SMALL)
            return None
        if response.status != 200:
            raise self._fail(response, f"give the manifest {repository}:{reference}")
        body = _read_capped(response, MAX_DOCUMENT, f"the manifest {repository}:{reference}")
        if reference.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != reference:
            raise RegistryError(f"the registry {self.host} sent a manifest that does not hash to {reference[:19]}")
        return (response.getheader("Content-Type") or "").split(";")[0].strip(), body

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        """A stream of the blob's stored bytes (following the registry's redirect to its storage)."""
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}")
        for _ in range(3):
            if response.status not in (301, 302, 303, 307, 308):
                break
            location = response.getheader("Location") or ""
            _read_capped(response, MAX_SMALL)
            response = self._send("GET", location, {"User-Agent": f"deltaimg/{__version__}"}, None)
        if response.status != 200:
            raise self._fail(response, f"give the blob {digest[:19]} of {repository}")
        return io.BufferedReader(_Stream(response, f"blob {digest[:19]}"), buffer_size=1 << 20)  # type: ignore[return-value]

    def read_blob(self, repository: str, digest: str) -> bytes:
        """A small blob (an image config), checked against its digest."""
        with self.open_blob(repository, digest) as stream:
            data = stream.read(MAX_DOCUMENT + 1)
        if len(data) > MAX_DOCUMENT:
            raise RegistryError(f"the blob {digest[:19]} of {repository} is over {MAX_DOCUMENT} bytes, too large for a config")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"the registry {self.host} sent a blob that does not hash to {digest[:19]}")
        return data

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}")
        response.read()
        if response.status in (200, 404):
            return response.status == 200
        raise self._fail(response, f"say whether {repository} has blob {digest[:19]}")

    def start_upload(self, repository: str, mount: str | None = None, source: str | None = None) -> str | None:
        """The upload's location; None when the registry mounted ``mount`` from repository ``source``.
        A mount the registry will not make (it starts an upload instead, 202, or the account may not
        pull ``source`` with the same token, 401) gives the location of an upload all the same."""
        query = f"?{urllib.parse.urlencode({'mount': mount, 'from': source})}" if mount and source else ""
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/{query}", {"Content-Length": "0"}, b"",
                                refusable=bool(query))
        if response.status in (401, 403) and query:
            _read_capped(response, MAX_SMALL)
            return self.start_upload(repository)
        if response.status == 201 and query:
            response.read()
            return None
        if response.status != 202 or not response.getheader("Location"):
            raise self._fail(response, f"start an upload to {repository}")
        response.read()
        return response.getheader("Location")

    def upload(self, location: str, digest: str, size: int, opener: Callable[[], BinaryIO]) -> None:
        """PUT the whole blob to an upload ``location`` (monolithic: no chunks)."""
        separator = "&" if urllib.parse.urlsplit(location).query else "?"
        response = self.request("PUT", f"{location}{separator}{urllib.parse.urlencode({'digest': digest})}",
                                {"Content-Length": str(size), "Content-Type": "application/octet-stream"}, opener)
        if response.status != 201:
            raise self._fail(response, f"take the blob {digest[:19]}")
        response.read()

    def put_manifest(self, repository: str, tag: str, media_type: str, body: bytes) -> None:
        response = self.request("PUT", f"/v2/{repository}/manifests/{tag}", {"Content-Type": media_type}, body)
        if response.status != 201:
            raise self._fail(response, f"take the manifest {repository}:{tag}")
        response.read()


def needed_scope(method: str, path: str) -> str:
    """The token scopes a request needs, as distribution's access controller asks for them."""
    parts = urllib.parse.urlsplit(path)
    match = _API_PATH.match(parts.path)
    if not match:
        return ""
    action = "pull" if method in ("GET", "HEAD") else "pull,push"
    scopes = [f"repository:{match['name']}:{action}"]
    source = urllib.parse.parse_qs(parts.query).get("from")
    if source:
        scopes.append(f"repository:{source[0]}:pull")
    return " ".join(scopes)


def _read_capped(response: http.client.HTTPResponse, cap: int, what: str | None = None) -> bytes:
    try:
        data = response.read(cap + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise RegistryError(f"the registry stopped answering ({exc}); run again") from None
    finally:
        response.close()
    if len(data) > cap:
        if what is None:
            return data[:cap]
        raise RegistryError(f"{what} is over {cap} bytes; no image's is that large")
    return data
