"""deltaimg apply into containerd (Debian's 1.6, private to each test), through ctr.

The images are built by the Docker engine; the base is put into containerd the way a host gets
it there (``ctr images import`` of a docker save archive), then the bundle is applied with
``deltaimg apply --engine containerd=SOCKET,k8s.io``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from deltaimg.engine.containerd import connect, normalize_ref
from deltaimg.errors import BaseMissingError, EngineError
from tests.conftest import run_cli
from tests.containerd_helpers import BIG, apply, containerd_pair, containerd_service, import_base  # noqa: F401
from tests.containerd_helpers import start_containerd, stop_containerd


@pytest.fixture
def pair(containerd_pair):
    return containerd_pair

def test_apply_imports_only_the_new_layer_and_the_image_has_the_target_id(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)

    result = apply(service, pair, keypair)

    assert result.returncode == 0, result.stderr
    ref = normalize_ref(pair["tag"]["v2"])
    listed = service.engine.references()
    assert set(listed) == {normalize_ref(pair["tag"]["v1"]), ref}  # namespace k8s.io, no stray short name
    config = service.engine.read_config(ref)
    assert "sha256:" + hashlib.sha256(config).hexdigest() == pair["v2"]
    assert "rebuilt 1 layer(s), every one matching its diff_id; loading" in result.stdout + result.stderr
    assert "containerd's containers belong to its orchestrator; deltaimg swaps none" in result.stdout + result.stderr
    assert "kubectl set image deployment/NAME" in result.stdout + result.stderr


def test_the_adapter_reads_the_base_exactly(containerd_service, pair):
    service = containerd_service
    import_base(service, pair)
    engine = service.engine
    record = engine.find_image(pair["v1"])
    assert record["Id"] == pair["v1"] and record["RepoTags"] == [normalize_ref(pair["tag"]["v1"])]
    assert engine.find_image(pair["tag"]["v1"]) == record  # by its short name, normalized
    config = engine.read_config(pair["v1"])
    assert "sha256:" + hashlib.sha256(config).hexdigest() == pair["v1"]
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert record["RootFS"]["Layers"] == diff_ids
    sizes = {d: len(stream.read()) for d, stream in engine.export_layers(pair["v1"], set(diff_ids), {})}
    assert list(sizes) == list(dict.fromkeys(diff_ids)) and max(sizes.values()) > BIG


def test_a_container_run_from_the_imported_image_reads_the_new_layer(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)
    assert apply(service, pair, keypair).returncode == 0

    ref = normalize_ref(pair["tag"]["v2"])
    run = subprocess.run(service.ctr.argv("run", "--rm", "--cgroup", "", ref, "deltaimg-test-run", "sh", "-c",
                                          "cat /only-new; echo $VERSION; wc -c < /big"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["new-layer-only", "2", str(BIG)]


def test_the_thin_import_writes_a_fraction_of_what_a_full_import_writes(pair, keypair, tmp_path, capsys):
    """The same target into two fresh containerds holding the base: deltaimg apply (an OCI archive
    naming the base's blobs), and the full archive deltaimg apply -o rebuilds, loaded by the
    adapter. What containerd writes tells them apart (its root ends the same size)."""
    written, grown = {}, {}
    for way in ("thin", "full"):
        folder = tmp_path / way
        folder.mkdir()
        service = start_containerd(str(folder))
        try:
            import_base(service, pair)
            before, root_before = service.written_bytes(), service.root_bytes()
            if way == "thin":
                assert apply(service, pair, keypair).returncode == 0
            else:
                assert service.engine.load_archive(pair["full"]) == [normalize_ref(pair["tag"]["v2"])]
            assert service.engine.find_image(pair["tag"]["v2"])["Id"] == pair["v2"]
            written[way], grown[way] = service.written_bytes() - before, service.root_bytes() - root_before
        finally:
            stop_containerd(service)
    with capsys.disabled():
        print(f"\ncontainerd wrote {written['thin']} bytes (thin) vs {written['full']} (full); "
              f"its root grew {grown['thin']} vs {grown['full']}")
    assert written["full"] > BIG  # the full import sends the 8 MiB layer again
    assert written["thin"] < written["full"] / 4
    assert abs(grown["thin"] - grown["full"]) < 64 << 10


def test_a_namespace_without_the_base_gets_nothing(containerd_service, pair, keypair):
    service = containerd_service
    result = apply(service, pair, keypair)
    assert result.returncode == BaseMissingError.exit_code
    assert "Traceback" not in result.stderr and f"this engine lacks {pair['v1'][:19]}" in result.stderr
    assert service.engine.references() == {}


def test_dry_run_and_a_second_apply_import_nothing(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)
    dry = apply(service, pair, keypair, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would rebuild and load" in dry.stdout
    assert normalize_ref(pair["tag"]["v2"]) not in service.engine.references()

    assert apply(service, pair, keypair).returncode == 0
    digest = service.engine.references()[normalize_ref(pair["tag"]["v2"])]
    again = apply(service, pair, keypair)
    assert again.returncode == 0, again.stderr
    assert "already applied" in again.stdout + again.stderr
    assert service.engine.references()[normalize_ref(pair["tag"]["v2"])] == digest


def test_an_unreachable_containerd_is_one_engine_error(tmp_path, pair, keypair):
    with pytest.raises(EngineError, match=r"^cannot reach containerd at .*nothing\.sock \(.*\); start containerd "
                                          r"or name its socket: --engine containerd=SOCKET \(k3s: --engine k3s, "
                                          r"/run/k3s/containerd/containerd.sock\)$"):
        connect(str(tmp_path / "nothing.sock"))
    result = run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", f"containerd={tmp_path}/nothing.sock")
    assert result.returncode == EngineError.exit_code and "Traceback" not in result.stderr
    assert "cannot reach containerd at" in result.stderr


def test_an_unknown_engine_is_a_usage_error(pair, keypair):
    result = run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", "cri-o")
    assert result.returncode == 2 and "engine cri-o: give docker, podman" in result.stderr


@pytest.mark.parametrize("ref, stored", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("app:1.1", "docker.io/library/app:1.1"),
    ("acme/app:1.1", "docker.io/acme/app:1.1"),
    ("registry.example:5000/app", "registry.example:5000/app:latest"),
    ("localhost/app:2", "localhost/app:2"),
])
def test_references_are_normalized_as_containerd_stores_them(ref, stored):
    assert normalize_ref(ref) == stored
