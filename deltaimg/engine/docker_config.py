"""Registry credentials from the Docker config file, as ``docker login`` leaves them.

``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``) is read as the Docker CLI reads
it: a ``credHelpers`` entry for the registry host names the helper for it; else ``credsStore``
names the helper for every registry; else the ``auths`` entry's ``auth`` (base64 ``user:password``).
A helper is the program ``docker-credential-NAME`` on PATH, run as ``docker-credential-NAME get``
with the server's address (``HOST:PORT``) on its standard input; it answers
``{"ServerURL": ..., "Username": ..., "Secret": ...}`` on its standard output, or exits non-zero
saying ``credentials not found`` (then the ``auths`` entry, if any, is used). It is given
:data:`HELPER_TIMEOUT` seconds and its answer is capped at :data:`MAX_HELPER_ANSWER` bytes.
"""

from __future__ import annotations

import base64
import os
import selectors
import subprocess
import time
import urllib.parse

from deltaimg.errors import RegistryError, printable
from deltaimg.safejson import load_json

MAX_DOCKER_CONFIG = 1 << 20
MAX_HELPER_ANSWER = 64 << 10
HELPER_TIMEOUT = 30.0
NOT_FOUND = "credentials not found"  # what docker-credential-helpers print for a server they hold nothing for


def docker_config_path() -> str:
    return os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for the registry ``host`` (``HOST[:PORT]``), or None when the config has none."""
    path = docker_config_path()
    config = _read(path)
    helpers = config.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    if not helper and isinstance(config.get("credsStore"), str):
        helper = config["credsStore"]
    if helper:
        if not isinstance(helper, str) or not helper.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise RegistryError(printable(f"the Docker config file {path} names the credential helper {helper!r}, "
                                          "which is not a helper's name; fix credsStore or credHelpers there"))
        found = helper_credentials(helper, host)
        if found is not None:
            return found
    return _from_auths(config, host, path)


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCKER_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise RegistryError(f"cannot read the Docker config file {path}: {exc.strerror}") from None
    if len(data) > MAX_DOCKER_CONFIG:
        raise RegistryError(f"the Docker config file {path} is over {MAX_DOCKER_CONFIG} bytes; it is not one docker login writes")
    config = load_json(data, f"the Docker config file {path}", "any Docker config does", RegistryError)
    return config if isinstance(config, dict) else {}


def _from_auths(config: dict, host: str, path: str) -> tuple[str, str] | None:
    auths = config.get("auths")
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if urllib.parse.urlsplit(key if "//" in key else "//" + key).netloc != host or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise RegistryError(f"the Docker config file {path} holds a malformed auth for {host}; run docker login {host} again")
            return user, password
    return None


def helper_credentials(helper: str, host: str) -> tuple[str, str] | None:
    """What ``docker-credential-HELPER get`` holds for ``host``; None when it holds nothing for it."""
    program = f"docker-credential-{helper}"
    try:
        process = subprocess.Popen([program, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise RegistryError(f"cannot run the credential helper {program} that the Docker config file "
                            f"{docker_config_path()} names: {exc.strerror}; install it or fix credsStore/credHelpers") from None
    try:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(host.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        answer = _read_answer(process, program)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    if process.returncode != 0:
        if NOT_FOUND in answer.decode("utf-8", "replace").lower():
            return None
        text = answer.decode("utf-8", "replace").strip().splitlines()
        raise RegistryError(printable(f"the credential helper {program} failed for {host} (exit {process.returncode}"
                                      f"{': ' + text[0][:200] if text else ''}); check it with: echo {host} | {program} get"))
    found = load_json(answer, f"the credential helper {program}'s answer", "a helper's answer does", RegistryError)
    user = found.get("Username") if isinstance(found, dict) else None
    secret = found.get("Secret") if isinstance(found, dict) else None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        raise RegistryError(f"the credential helper {program} answered for {host} without a Username and Secret")
    if user == "<token>":
        raise RegistryError(f"the credential helper {program} holds an identity token for {host}, which deltaimg "
                            f"does not trade in; docker login {host} with a user name and password (or access token)")
    return user, secret


def _read_answer(process: subprocess.Popen, program: str) -> bytes:
    """The helper's output, up to the cap, within the timeout."""
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + HELPER_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RegistryError(f"the credential helper {program} did not answer in {HELPER_TIMEOUT:.0f} s; "
                                    "check that it runs without asking anything")
            chunk = os.read(process.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_HELPER_ANSWER:
                raise RegistryError(f"the credential helper {program} answered more than {MAX_HELPER_ANSWER} bytes; "
                                    "no credential is that long")
            chunks.append(chunk)
    left = deadline - time.monotonic()
    try:
        process.wait(max(left, 0.1))
    except subprocess.TimeoutExpired:
        raise RegistryError(f"the credential helper {program} did not exit in {HELPER_TIMEOUT:.0f} s") from None
    return b"".join(chunks)
