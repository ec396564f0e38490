"""Bundles written by earlier versions (bundles/v*/) still verify and apply to the same image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import archive_image, assert_same_image, run_cli

GOLDEN = sorted((Path(__file__).resolve().parent.parent / "bundles").glob("v*/bundle.dimg"))


def test_there_is_a_golden_bundle_for_the_current_format():
    from deltaimg.bundle.format import FORMAT_VERSION

    assert any(path.parent.name == f"v{FORMAT_VERSION}" for path in GOLDEN)


@pytest.mark.parametrize("bundle", GOLDEN, ids=[p.parent.name for p in GOLDEN])
def test_golden_files_are_the_ones_first_committed(bundle):
    """A golden bundle is never regenerated: a format change bumps FORMAT_VERSION and adds bundles/v<N+1>
    (scripts/make-golden writes these sums once, with the files)."""
    here = bundle.parent
    sums = {name: digest for digest, name in (line.split("  ", 1) for line in (here / "SHA256SUMS").read_text().splitlines())}
    assert sorted(sums) == sorted(p.name for p in here.iterdir() if p.name != "SHA256SUMS")
    assert {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in sums} == sums


@pytest.mark.parametrize("bundle", GOLDEN, ids=[p.parent.name for p in GOLDEN])
def test_golden_bundle_verifies_and_applies(bundle, tmp_path):
    here = bundle.parent
    assert run_cli("verify", str(bundle), "--trust", str(here / "key.pub")).returncode == 0
    out = tmp_path / "rebuilt.tar"
    result = run_cli("apply", str(bundle), "--trust", str(here / "key.pub"), "--base", str(here / "base.tar"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    config, _ = archive_image(str(here / "target.tar"))
    assert_same_image(str(out), config)
