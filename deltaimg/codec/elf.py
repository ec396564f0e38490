"""ELF images as the branch transform needs them: 64-bit little-endian x86-64 and AArch64 shared
libraries and executables, parsed defensively.

Every offset and count is checked against the file's size; anything odd (another class, byte
order or machine, a table past the end, overlapping code ranges) makes :func:`parse` answer None
and the file is coded as any other. What it returns, :class:`Layout`, is all the transform needs:
where the code lies in the file and at which address, and the image's address range. The symbol
tables give the address map between two versions (:func:`address_map`).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

X86_64, AARCH64 = 62, 183
MACHINES = (X86_64, AARCH64)
MAX_SECTIONS = 1 << 12
MAX_CODE_RANGES = 64  # real libraries have five or six (.init, .plt, .plt.got, .plt.sec, .text, .fini)
MAX_SYMBOLS = 1 << 20
MAX_NAME = 1 << 12
MAX_MAP = 1 << 16  # ranges in an address map; more and the files are not coded with one
ADDRESS_LIMIT = (1 << 31) - (1 << 20)  # x86-64's rel32 arithmetic stays within int32 below this

_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
SHF_ALLOC, SHF_EXECINSTR = 2, 4
SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHT_DYNSYM = 2, 3, 8, 11
PT_LOAD, PF_X = 1, 1
STT_OBJECT, STT_FUNC = 1, 2


@dataclass(frozen=True)
class CodeRange:
    """``size`` bytes of code at file ``offset``, loaded at address ``addr``."""

    offset: int
    size: int
    addr: int


@dataclass(frozen=True)
class Layout:
    """Where an ELF image's code is, and the address range [lo, hi) a plausible branch targets."""

    machine: int
    lo: int
    hi: int
    code: tuple[CodeRange, ...]

    def valid_for(self, size: int) -> bool:
        """Whether this layout fits a file of ``size`` bytes and the transform's arithmetic: the
        decoder asks it of the layout a bundle declares, the parser of the one it found."""
        if self.machine not in MACHINES or not 0 <= self.lo < self.hi <= ADDRESS_LIMIT:
            return False
        if not 0 < len(self.code) <= MAX_CODE_RANGES:
            return False
        end = 0
        for piece in self.code:
            if piece.offset < end or piece.size <= 0 or piece.offset + piece.size > size:
                return False
            if piece.addr + piece.size > ADDRESS_LIMIT:
                return False
            if self.machine == AARCH64 and (piece.addr % 4 or piece.size % 4):
                return False
            end = piece.offset + piece.size
        return True


@dataclass(frozen=True)
class Image:
    layout: Layout
    symbols: dict[bytes, tuple[int, int]]  # name -> (address, size), names that occur once only
    loads: tuple[tuple[int, int, int], ...]  # (file offset, file size, address) of each loaded segment

    def address(self, offset: int) -> int | None:
        """The address file ``offset`` is loaded at, if it is."""
        for start, size, addr in self.loads:
            if start <= offset < start + size:
                return addr + offset - start
        return None


def parse(data: bytes) -> Image | None:
    """The image in ``data``, or None when it is not an ELF file this codec takes."""
    if len(data) < _HEADER.size or data[:7] != b"\x7fELF\x02\x01\x01":
        return None
    (_, e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     shstrndx) = _HEADER.unpack_from(data)
    if e_type not in (2, 3) or machine not in MACHINES:
        return None
    sections = _table(data, shoff, shnum, shentsize, _SECTION)
    programs = _table(data, phoff, phnum, phentsize, _PROGRAM)
    if sections is None or programs is None:
        return None
    loads = [p for p in programs if p[0] == PT_LOAD]
    code = [CodeRange(s[4], s[5], s[3]) for s in sections
            if s[2] & SHF_EXECINSTR and s[2] & SHF_ALLOC and s[1] != SHT_NOBITS and s[5]]
    if not code:  # no section headers (stripped that far): the loader's executable segments
        code = [CodeRange(p[2], p[5], p[3]) for p in loads if p[1] & PF_X and p[5]]
    spans = [(p[3], p[3] + p[6]) for p in loads] or [(s[3], s[3] + s[5]) for s in sections if s[2] & SHF_ALLOC]
    if not spans:
        return None
    layout = Layout(machine, min(lo for lo, _ in spans), max(hi for _, hi in spans),
                    tuple(sorted(code, key=lambda piece: piece.offset)))
    if not layout.valid_for(len(data)):
        return None
    return Image(layout, _symbols(data, sections, shstrndx), tuple((p[2], p[5], p[3]) for p in loads))


def _table(data: bytes, offset: int, count: int, entsize: int, shape: struct.Struct) -> list[tuple] | None:
    """A header table, or None when it does not fit the file; an absent table is empty."""
    if not count or not offset:
        return []
    if entsize != shape.size or count > MAX_SECTIONS or offset + count * entsize > len(data):
        return None
    return [shape.unpack_from(data, offset + n * entsize) for n in range(count)]


def _name(data: bytes, table: tuple | None, at: int) -> bytes | None:
    """The NUL-terminated name at ``at`` in string table section ``table``."""
    if table is None or table[1] != SHT_STRTAB or at >= table[5] or table[4] + table[5] > len(data):
        return None
    start = table[4] + at
    end = data.find(b"\0", start, min(start + MAX_NAME, table[4] + table[5]))
    return None if end < 0 else data[start:end]


def _symbols(data: bytes, sections: list[tuple], shstrndx: int) -> dict[bytes, tuple[int, int]]:
    """Functions and objects of .symtab (else .dynsym) by name, and section starts by section name
    (size -1: a section keeps its name when it grows). A name that occurs twice is left out."""
    found: dict[bytes, tuple[int, int]] = {}
    twice: set[bytes] = set()

    def add(name: bytes | None, value: int, size: int) -> None:
        if not name:
            return
        if name in found:
            twice.add(name)
        found[name] = (value, size)

    names = sections[shstrndx] if shstrndx < len(sections) else None
    for s in sections:
        if s[2] & SHF_ALLOC and s[3]:
            name = _name(data, names, s[0])
            add(None if name is None else b"section " + name, s[3], -1)
    kinds = [t for t in (SHT_SYMTAB, SHT_DYNSYM) if any(s[1] == t for s in sections)]
    table = next((s for s in sections if s[1] == kinds[0]), None) if kinds else None
    if table is not None and table[9] == _SYMBOL.size and table[4] + table[5] <= len(data) and table[6] < len(sections):
        strings = sections[table[6]]
        for n in range(min(table[5] // _SYMBOL.size, MAX_SYMBOLS)):
            st_name, info, _, shndx, value, size = _SYMBOL.unpack_from(data, table[4] + n * _SYMBOL.size)
            if info & 0xF in (STT_FUNC, STT_OBJECT) and shndx and value and size:
                add(_name(data, strings, st_name), value, size)
    return {name: place for name, place in found.items() if name not in twice}


def address_map(base: Image, target: Image, matches: list[tuple[int, int]] = []) -> list[tuple[int, int]]:
    """(base address, shift) ranges, sorted: from each base address on, up to the next one, a base
    address plus its shift is where the same thing lies in ``target``; below the first, no shift.
    Made from the symbols both images have with the same name and size, and from ``matches``:
    (base address, target address) of runs a delta codec matched (:func:`matched_runs`); [] when
    that makes too many ranges."""
    pairs = sorted([(place[0], target.symbols[name][0]) for name, place in base.symbols.items()
                    if name in target.symbols and target.symbols[name][1] == place[1]] + matches)
    ranges: list[tuple[int, int]] = []
    for base_addr, target_addr in pairs:
        shift = target_addr - base_addr
        if ranges and ranges[-1][0] == base_addr:
            continue
        if (ranges[-1][1] if ranges else 0) != shift:
            ranges.append((base_addr, shift))
    return ranges if len(ranges) <= MAX_MAP else []


MATCH_MIN = 256  # shorter matched runs add ranges to the map that cost more than they gain


def matched_runs(control: bytes, base: Image, target: Image) -> list[tuple[int, int]]:
    """(base address, target address) of the loaded runs of at least ``MATCH_MIN`` bytes that
    bsdiff's ``control`` stream copies from base to target (with their small edits)."""
    runs = []
    base_at = target_at = 0
    for add, extra, seek in struct.iter_unpack("<QQQ", control):
        if add >= MATCH_MIN:
            base_addr, target_addr = base.address(base_at), target.address(target_at)
            if base_addr is not None and target_addr is not None:
                runs.append((base_addr, target_addr))
        seek = -(seek & ((1 << 63) - 1)) if seek >> 63 else seek  # bsdiff's sign and magnitude
        base_at += add + seek
        target_at += add + extra
    return runs


class Mapper:
    """:func:`address_map`'s ranges as a function; an address it would move out of the
    transform's range is left where it is."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._starts = [start for start, _ in ranges]
        self._shifts = [shift for _, shift in ranges]

    def __call__(self, addr: int) -> int:
        at = bisect.bisect_right(self._starts, addr) - 1
        moved = addr + self._shifts[at] if at >= 0 else addr
        return moved if 0 <= moved < ADDRESS_LIMIT else addr
