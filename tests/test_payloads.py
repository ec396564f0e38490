"""Payloads too large to hold in memory wait for their turn in the target layer's own file when its
bytes sit in one (a docker save archive), and in a spill file only when they do not (a compressed
OCI blob); both rebuild byte for byte."""

from __future__ import annotations

import random

import pytest

from deltaimg.delta import encoder, payloads
from tests import imagefactory as f
from tests.test_formats import round_trip, written

BIG = encoder.MEMORY_PAYLOAD_MAX + (1 << 20)


def disk(seed: int, edits: int) -> bytes:
    data = bytearray(BIG)
    data[4096:8192] = random.Random(1).randbytes(4096)
    rnd = random.Random(seed)
    for _ in range(edits):
        at = rnd.randrange(BIG - 64)
        data[at : at + 64] = rnd.randbytes(64)
    return bytes(data)


def pair(tmp_path) -> tuple[f.ImageSpec, f.ImageSpec]:
    specs = []
    for name, files in (("v1", [f.file("var/disk.img", disk(2, 0))]),
                        ("v2", [f.file("var/disk.img", disk(3, 5)), f.file("var/new.img", random.Random(4).randbytes(BIG))])):
        layer = f.write_layer(tmp_path / f"{name}.layer", f.complete_tree(files))
        specs.append(f.ImageSpec([layer], tags=[f"payloads:{name}"]))
    return specs[0], specs[1]


@pytest.mark.parametrize("form, spills", [("docker-archive", 0), ("oci-gzip", 2)])
def test_large_payloads_rebuild_exactly_and_spill_only_when_the_layer_is_not_in_a_file(keypair, tmp_path, monkeypatch,
                                                                                      form, spills):
    made = []
    real = payloads.tempfile.mkstemp
    monkeypatch.setattr(payloads.tempfile, "mkstemp", lambda **kw: made.append(kw) or real(**kw))
    v1, v2 = pair(tmp_path)
    if form == "docker-archive":
        base = written(f.write_docker_archive(tmp_path / "v1.tar", [v1]))
        target = written(f.write_docker_archive(tmp_path / "v2.tar", [v2]))
        refs = (str(base.path), str(target.path))
    else:
        base = written(f.write_oci_dir(tmp_path / "v1", [v1], compression="gzip"))
        target = written(f.write_oci_dir(tmp_path / "v2", [v2], compression="gzip"))
        refs = (f"oci:{base.path}", f"oci:{target.path}")
    manifest = round_trip(*refs, keypair, tmp_path, target.config_bytes)
    [layer] = manifest["layers"]
    assert (layer["stats"]["zstd_delta"] + layer["stats"]["bsdiff"], layer["stats"]["literal"]) == (1, 1)
    assert len([kw for kw in made if kw.get("suffix") == ".payload"]) == spills
