"""Package databases as each package manager writes them, and versions ordered as each orders them."""

from __future__ import annotations

import pytest

from deltaimg.diff import packages
from deltaimg.diff.packages import Package
from tests import imagefactory as f


@pytest.mark.parametrize("path, kind", [
    ("var/lib/dpkg/status", "deb"),
    ("var/lib/dpkg/status.d/base-files", "deb"),  # distroless: one file per package
    ("var/lib/dpkg/status.d/base-files.md5sums", None),
    ("var/lib/dpkg/status-old", None),
    ("lib/apk/db/installed", "apk"),
    ("usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA", "python"),
    ("app/venv/lib/python3.11/site-packages/PyYAML-6.0.1.dist-info/METADATA", "python"),
    ("usr/lib/python3/dist-packages/requests-2.31.0.dist-info/RECORD", None),
    ("etc/METADATA", None),
])
def test_which_files_are_package_databases(path, kind):
    assert packages.database_kind(path) == kind


def test_dpkg_status_lists_installed_packages_only():
    status = f.dpkg_status([("openssl", "3.0.20-1"), ("libc6", "2.36-9")], config_files=[("exim4", "4.96-15")])
    assert packages.parse_database("deb", status.read()) == (
        Package("deb", "libc6", "2.36-9"), Package("deb", "openssl", "3.0.20-1"))


def test_a_package_installed_for_two_architectures_is_two_packages():
    status = (b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n"
              b"Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\n\n"
              b"Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13-1\n")
    assert [p.name for p in packages.parse_database("deb", status)] == ["libc6:amd64", "libc6:i386", "zlib1g"]


def test_apk_installed_lists_every_stanza():
    db = f.apk_installed([("busybox", "1.36.1-r15"), ("musl", "1.2.4-r2")])
    assert packages.parse_database("apk", db.read()) == (
        Package("apk", "busybox", "1.36.1-r15"), Package("apk", "musl", "1.2.4-r2"))


def test_dist_info_metadata_names_one_distribution_from_its_headers_only():
    metadata = b"Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.1\n\nName: not-a-header\nVersion: 0\n"
    assert packages.parse_database("python", metadata) == (Package("python", "PyYAML", "6.0.1"),)


@pytest.mark.parametrize("older, newer", [
    ("3.0.20-1", "3.0.22-1"),
    ("1.0~rc1-1", "1.0-1"),  # ~ sorts before the release
    ("2.36-9+deb12u4", "2.36-9+deb12u10"),  # numbers compare as numbers
    ("9.9-1", "1:1.0-1"),  # the epoch wins
    ("1.0-1", "1.0-1.1"),
    ("1.0a", "1.0+"),  # letters before other signs
])
def test_dpkg_order(older, newer):
    assert packages.compare_versions("deb", older, newer) < 0 < packages.compare_versions("deb", newer, older)


@pytest.mark.parametrize("older, newer", [
    ("1.36.1-r15", "1.36.1-r16"),
    ("3.1.4_rc1-r0", "3.1.4-r0"),  # a pre-release before the release
    ("3.1.4-r0", "3.1.4_p1-r0"),  # a patch level after it
    ("1.9-r0", "1.10-r0"),
    ("1.2.3-r0", "1.2.3a-r0"),
])
def test_apk_order(older, newer):
    assert packages.compare_versions("apk", older, newer) < 0 < packages.compare_versions("apk", newer, older)


@pytest.mark.parametrize("older, newer", [
    ("2.31.0", "2.32.0"),
    ("1.0rc1", "1.0"),
    ("1.0.dev1", "1.0a1"),
    ("1.0", "1.0.post1"),
    ("2.0", "1!0.1"),
    ("1.0+abc", "1.0+1"),
])
def test_pep440_order(older, newer):
    assert packages.compare_versions("python", older, newer) < 0 < packages.compare_versions("python", newer, older)


def test_equal_versions_compare_equal_however_written():
    assert packages.compare_versions("python", "1.0", "1.0.0") == 0
    assert packages.compare_versions("deb", "0:1.0-1", "1.0-1") == 0


def test_changes_are_classified_and_python_names_normalised():
    old = [Package("deb", "openssl", "3.0.20-1"), Package("deb", "curl", "7.88.1-10"),
           Package("python", "PyYAML", "6.0.1"), Package("python", "Jinja2", "3.1.2")]
    new = [Package("deb", "openssl", "3.0.22-1"), Package("deb", "zstd", "1.5.4-2"),
           Package("python", "pyyaml", "6.0"), Package("python", "jinja2", "3.1.2")]
    assert [c.as_dict() for c in packages.changes(old, new)] == [
        {"ecosystem": "deb", "name": "curl", "old": "7.88.1-10", "new": None, "change": "removed"},
        {"ecosystem": "deb", "name": "openssl", "old": "3.0.20-1", "new": "3.0.22-1", "change": "upgraded"},
        {"ecosystem": "deb", "name": "zstd", "old": None, "new": "1.5.4-2", "change": "added"},
        {"ecosystem": "python", "name": "pyyaml", "old": "6.0.1", "new": "6.0", "change": "downgraded"},
    ]


def test_a_distribution_installed_in_two_places_lists_both_versions():
    old = [Package("python", "pip", "23.0.1"), Package("python", "pip", "24.0")]
    new = [Package("python", "pip", "23.0.1"), Package("python", "pip", "24.2")]
    assert [c.as_dict() for c in packages.changes(old, new)] == [
        {"ecosystem": "python", "name": "pip", "old": "23.0.1, 24.0", "new": "23.0.1, 24.2", "change": "upgraded"}]
