"""Shared libraries compiled by gcc in two versions, for the executable codec's tests and the
format 3 golden bundle: many small functions calling each other; the edited version grows two
of them, so every function after each edit moves and every call across it changes."""

from __future__ import annotations

import subprocess
from pathlib import Path


def compile_library(tmp: Path, name: str, edit: bool, functions: int = 600) -> bytes:
    edited = (functions // 30, functions // 2)
    declarations, bodies = [], []
    for n in range(functions):
        extra = "sink += n * 7; sink ^= n >> 3; sink -= 11;" if edit and n in edited else ""
        calls = " ".join(f"if (n & {1 << (k % 8)}) sink += f{(n * 7 + k * 13) % functions}(n - 1);" for k in range(4))
        declarations.append(f"int f{n}(int n);")
        bodies.append(f"int f{n}(int n) {{ if (n <= 0) return {n}; {extra} {calls} return sink + {n}; }}")
    source = tmp / f"{name}.c"
    source.write_text("\n".join(["int sink;", *declarations, *bodies]) + "\n")
    out = tmp / f"{name}.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-fno-inline", "-o", str(out), str(source)], check=True,
                   capture_output=True)
    return out.read_bytes()
