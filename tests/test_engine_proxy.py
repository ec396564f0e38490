"""The recording proxy the no-change tests rely on sees every call, reads and writes apart."""

from __future__ import annotations

import docker
import pytest

from tests.engine_proxy import recording_engine


def test_the_recording_proxy_relays_calls_and_tells_writes_from_reads(docker_client):
    with recording_engine() as engine:
        client = docker.DockerClient(base_url=engine.url, version="1.41")
        assert client.version()["Version"] == docker_client.version()["Version"]  # relayed to the real engine
        with pytest.raises(docker.errors.NotFound):
            client.api.stop("deltaimg-proxy-test-absent")  # a write that finds nothing to change
        client.close()
    assert engine.requests == ["GET /v1.41/version", "POST /v1.41/containers/deltaimg-proxy-test-absent/stop"]
    assert engine.writes() == ["POST /v1.41/containers/deltaimg-proxy-test-absent/stop"]
