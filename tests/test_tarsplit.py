"""tarsplit: any byte stream splits into entries that join back to the same bytes."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from deltaimg.tar.split import TRAILER, TarSplitter


def rejoin(data: bytes, seekable: bool = True) -> tuple[bytes, list]:
    stream = io.BytesIO(data) if seekable else _Unseekable(data)
    splitter = TarSplitter(stream)
    out = bytearray()
    entries = []
    for entry in splitter:
        out += entry.pre
        out += b"".join(splitter.payload_chunks())
        splitter.finish_entry()
        if entry.typeflag != TRAILER:
            out += entry.pad if entry.pad is not None else bytes(entry.pad_len)
        entries.append(entry)
    return bytes(out), entries


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(min(len(buffer), 7000))  # short reads, as pipes give
        buffer[: len(data)] = data
        return len(data)


def tar_of(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type = size, kind
    for key, value in fields.items():
        setattr(ti, key, value)
    return ti


def test_every_kind_of_entry_rejoins_byte_exactly_and_is_named():
    long_name = "deep/" + "d" * 120 + "/" + "ü" * 90 + ".txt"
    caps = info("usr/bin/ping", 4, pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"})
    data = tar_of(
        (info("etc/", kind=tarfile.DIRTYPE), b""),
        (info("etc/hosts", 5), b"hosts"),
        (info(long_name, 3), b"abc"),
        (caps, b"ping"),
        (info("bin/sh", kind=tarfile.SYMTYPE, linkname="busybox"), b""),
        (info("bin/ls", kind=tarfile.LNKTYPE, linkname="bin/sh"), b""),
        (info("dev/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
        (info("run/fifo", kind=tarfile.FIFOTYPE), b""),
        (info("usr/bin/su", 2, mode=0o4755), b"su"),
        (info("var/.wh.cache", 0), b""),
        (info("opt/.wh..wh..opq", 0), b""),
    ) + bytes(4096)
    for seekable in (True, False):
        joined, entries = rejoin(data, seekable)
        assert joined == data
    names = [e.name for e in entries]
    assert long_name in names and "usr/bin/ping" in names and "opt/.wh..wh..opq" in names
    assert entries[-1].typeflag == TRAILER and entries[-1].size > 1024
    assert next(e for e in entries if e.name == "bin/sh").linkname == "busybox"


def test_gnu_long_names_and_nonzero_padding_survive():
    data = bytearray(tar_of((info("x" * 300, 10), b"0123456789"), fmt=tarfile.GNU_FORMAT))
    payload_end = data.index(b"0123456789") + 10
    data[payload_end + 3] = 0x41  # a writer that leaves junk in the padding
    joined, entries = rejoin(bytes(data))
    assert joined == bytes(data)
    assert entries[0].name == "x" * 300 and entries[0].pad is not None


def test_garbage_after_a_valid_header_becomes_the_trailer():
    data = tar_of((info("a", 3), b"abc"))[:-1024] + b"not a tar header" * 40
    joined, entries = rejoin(data)
    assert joined == data and entries[-1].typeflag == TRAILER


def test_a_payload_cut_short_is_reported():
    data = tar_of((info("a", 5000), b"z" * 5000))[:2000]
    try:
        rejoin(data)
    except EOFError:
        return
    raise AssertionError("a truncated payload must raise EOFError")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_arbitrary_bytes_rejoin(data):
    assert rejoin(data)[0] == data


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=150).filter(lambda s: "\x00" not in s), st.binary(max_size=1500)), max_size=6),
       st.integers(min_value=0, max_value=3))
def test_arbitrary_archives_rejoin_and_name_their_members(members, extra_blocks):
    data = tar_of(*[(info(name, len(body)), body) for name, body in members]) + bytes(512 * extra_blocks)
    joined, entries = rejoin(data)
    assert joined == data
    assert [e.size for e in entries[:-1]] == [len(body) for _, body in members]


def with_checksum(block: bytes, kind: str) -> bytes:
    """A header block with its checksum field recomputed: the unsigned sum (POSIX), the signed one
    (some old tars summed signed chars) or one that is off by one."""
    counted = block[:148] + b" " * 8 + block[156:]
    value = {"unsigned": sum(counted), "signed": sum(b - 256 if b > 127 else b for b in counted),
             "wrong": sum(counted) + 1}[kind]
    return block[:148] + b"%06o\0 " % value + block[156:]


def test_a_header_checks_with_its_unsigned_or_its_signed_sum_and_no_other():
    data = tar_of((info("caf\xe9-\xff", 5), b"hello"), fmt=tarfile.USTAR_FORMAT)
    assert any(b > 127 for b in data[:512])  # the name's bytes make the two sums differ
    for kind in ("unsigned", "signed"):
        archive = with_checksum(data[:512], kind) + data[512:]
        out, entries = rejoin(archive)
        assert out == archive
        assert [(e.name, e.size) for e in entries[:1]] == [("caf\xe9-\xff", 5)], kind
    wrong = with_checksum(data[:512], "wrong") + data[512:]
    out, entries = rejoin(wrong)
    assert out == wrong and [e.typeflag for e in entries] == [TRAILER]  # no header: all of it is trailer
