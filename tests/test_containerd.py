"""deltaimg apply into containerd (Debian's 1.6, private to each test), through ctr.

The images are built by the Docker engine; the base is put into containerd the way a host gets
it there (``ctr images import`` of a docker save archive), then the bundle is applied.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from deltaimg.apply.containerd import apply_to_containerd, normalize_ref
from deltaimg.bundle.format import open_bundle
from deltaimg.bundle.keys import trusted_keys
from deltaimg.engine import containerd
from deltaimg.errors import BaseMissingError, EngineError
from tests.conftest import run_cli
from tests.containerd_helpers import ContainerdService, containerd_service, start_containerd, stop_containerd  # noqa: F401
from tests.engine_helpers import EngineResources

BIG = 8 << 20  # the base's large layer


@pytest.fixture(scope="module")
def pair(docker_client, keypair, tmp_path_factory):
    """v1 (busybox and an 8 MiB layer) and v2 (v1 and a layer with /only-new) built by Docker;
    v1 as a docker save archive, the bundle v1 -> v2."""
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", [f"RUN head -c {BIG} /dev/urandom > /big", "ENV VERSION=1"])
    v2 = resources.build("v2", ["RUN echo new-layer-only > /only-new", "ENV VERSION=2"], base=v1)
    folder = tmp_path_factory.mktemp("containerd-pair")
    archive = str(folder / "v1.tar")
    tags = {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}
    with open(archive, "wb") as out:
        for chunk in docker_client.api.get_image(tags["v1"]):  # by name: the archive carries the tag
            out.write(chunk)
    bundle = str(folder / "v2.dimg")
    result = run_cli("make", f"docker-daemon:{tags['v1']}", f"docker-daemon:{tags['v2']}", "-o", bundle,
                     "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    yield {"v1": v1, "v2": v2, "tag": tags, "archive": archive, "bundle": bundle}
    resources.cleanup()


def import_base(service: ContainerdService, pair) -> None:
    service.ctr.run("images", "import", pair["archive"])
    assert normalize_ref(pair["tag"]["v1"]) in containerd.image_refs(service.ctr)


def bundle_of(pair, keypair):
    return open_bundle(pair["bundle"], trusted_keys([keypair[1]], None))


def test_apply_imports_only_the_new_layer_and_the_image_has_the_target_id(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)
    lines: list[str] = []

    outcome = apply_to_containerd(bundle_of(pair, keypair), service.ctr, log=lines.append)

    ref = normalize_ref(pair["tag"]["v2"])
    assert outcome.imported and outcome.image_id == pair["v2"] and outcome.refs == [ref]
    assert outcome.reused_layers == 3  # busybox, its links, the 8 MiB layer: named, not sent
    assert outcome.layer_bytes < 64 << 10 and outcome.archive_bytes < 64 << 10
    listed = containerd.image_refs(service.ctr)
    assert listed[ref] == outcome.manifest_digest
    image = containerd.read_image(service.ctr, ref, listed[ref])
    assert "sha256:" + hashlib.sha256(image.config_bytes).hexdigest() == pair["v2"]
    assert lines[0].startswith("rebuilt 1 layer(s), every one matching its diff_id; importing")
    assert any("kubectl set image deployment/NAME CONTAINER=" + ref in step for step in outcome.next_steps)


def test_a_container_run_from_the_imported_image_reads_the_new_layer(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)
    apply_to_containerd(bundle_of(pair, keypair), service.ctr, log=lambda line: None)

    ref = normalize_ref(pair["tag"]["v2"])
    run = subprocess.run(service.ctr.argv("run", "--rm", "--cgroup", "", ref, "deltaimg-test-run", "sh", "-c",
                                          "cat /only-new; echo $VERSION; wc -c < /big"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["new-layer-only", "2", str(BIG)]


def test_reuse_writes_a_fraction_of_what_a_full_import_writes(containerd_service, pair, keypair, tmp_path):
    """The same target, applied into two fresh containerds holding the base: with reuse, and with
    every layer in the archive. What containerd writes tells them apart (its content store keeps
    one copy per digest, so its root ends the same size)."""
    written, grown = {}, {}
    for reuse in (True, False):
        folder = tmp_path / f"ctd-{reuse}"
        folder.mkdir()
        service = start_containerd(str(folder))
        try:
            import_base(service, pair)
            before, root_before = service.written_bytes(), service.root_bytes()
            outcome = apply_to_containerd(bundle_of(pair, keypair), service.ctr, reuse=reuse, log=lambda line: None)
            assert outcome.image_id == pair["v2"] and outcome.reused_layers == (3 if reuse else 0)
            written[reuse], grown[reuse] = service.written_bytes() - before, service.root_bytes() - root_before
        finally:
            stop_containerd(service)
    assert written[False] > BIG  # the full import sends the 8 MiB layer again
    assert written[True] < written[False] / 4
    assert abs(grown[True] - grown[False]) < 64 << 10


def test_a_namespace_without_the_base_gets_nothing(containerd_service, pair, keypair):
    service = containerd_service
    with pytest.raises(BaseMissingError, match="containerd's namespace k8s.io lacks sha256:"):
        apply_to_containerd(bundle_of(pair, keypair), service.ctr, log=lambda line: None)
    assert containerd.image_refs(service.ctr) == {}


def test_dry_run_and_a_second_apply_import_nothing(containerd_service, pair, keypair):
    service = containerd_service
    import_base(service, pair)
    lines: list[str] = []
    dry = apply_to_containerd(bundle_of(pair, keypair), service.ctr, dry_run=True, log=lines.append)
    assert not dry.imported and lines[0].startswith("would rebuild ")
    assert normalize_ref(pair["tag"]["v2"]) not in containerd.image_refs(service.ctr)

    first = apply_to_containerd(bundle_of(pair, keypair), service.ctr, log=lambda line: None)
    lines.clear()
    again = apply_to_containerd(bundle_of(pair, keypair), service.ctr, log=lines.append)
    assert first.imported and not again.imported and again.manifest_digest == first.manifest_digest
    assert "already in containerd" in lines[0]


def test_an_unreachable_containerd_is_one_engine_error(tmp_path):
    with pytest.raises(EngineError, match=r"^cannot reach containerd at .*nothing\.sock .*start containerd or pass "
                                          r"--address \(k3s: /run/k3s/containerd/containerd.sock\)$"):
        containerd.connect(str(tmp_path / "nothing.sock"))


@pytest.mark.parametrize("ref, stored", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("app:1.1", "docker.io/library/app:1.1"),
    ("acme/app:1.1", "docker.io/acme/app:1.1"),
    ("registry.example:5000/app", "registry.example:5000/app:latest"),
    ("localhost/app:2", "localhost/app:2"),
])
def test_references_are_normalized_as_containerd_stores_them(ref, stored):
    assert normalize_ref(ref) == stored
