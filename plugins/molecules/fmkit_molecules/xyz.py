"""Reading and writing XYZ text: plain multi-frame XYZ and QM9's extended XYZ.

Plain frame: ``n`` / comment / ``n`` lines ``El x y z`` (Angstrom). QM9's extended XYZ
(Ramakrishnan et al. 2014) puts ``gdb <id> <15 properties>`` on the comment line, a 5th column
(Mulliken charge) on the atom lines, may write numbers as ``1.5*^-6`` (Mathematica exponent),
and appends frequencies / SMILES / InChI lines after the atoms (ignored here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_QM9_ID = re.compile(r"^(?:dsgdb9nsd_)?(\d+)$")


@dataclass(frozen=True)
class Record:
    """One molecule: ``symbols`` (n element symbols) and ``pos`` [n, 3] float64 in Angstrom."""

    id: str
    symbols: tuple[str, ...]
    pos: np.ndarray


@dataclass(frozen=True)
class Failure:
    """A record that could not be parsed (id or position, and why)."""

    id: str
    reason: str


def _float(tok: str) -> float:
    v = float(tok.replace("*^", "e"))
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {tok!r}")
    return v


def _record_id(comment: str, fallback: str) -> str:
    """``dsgdb9nsd_NNNNNN`` from a QM9 comment (``gdb 12 ...`` or ``dsgdb9nsd_000012``), else ``fallback``."""
    toks = comment.split()
    if len(toks) >= 2 and toks[0] == "gdb" and toks[1].isdigit():
        return f"dsgdb9nsd_{int(toks[1]):06d}"
    if toks:
        m = _QM9_ID.match(toks[0])
        if m and toks[0].startswith("dsgdb9nsd_"):
            return toks[0]
    return fallback


def parse_frame(lines: Sequence[str], start: int, fallback_id: str) -> tuple[Record | Failure, int]:
    """Parse the frame that begins at ``lines[start]``; return it (or a Failure) and the next line index.

    A frame whose count line is not a positive integer consumes just that line (the caller resyncs).
    """
    head = lines[start].strip()
    try:
        n = int(head)
        if n <= 0:
            raise ValueError
    except ValueError:
        return Failure(fallback_id, f"line {start + 1}: expected an atom count, got {head[:40]!r}"), start + 1
    comment = lines[start + 1] if start + 1 < len(lines) else ""
    rid = _record_id(comment, fallback_id)
    end = start + 2 + n
    if end > len(lines):
        return Failure(rid, f"truncated: {n} atoms announced, {max(0, len(lines) - start - 2)} lines left"), len(lines)
    symbols: list[str] = []
    pos = np.empty((n, 3), dtype=np.float64)
    for k in range(n):
        toks = lines[start + 2 + k].split()
        if len(toks) < 4:
            return Failure(rid, f"line {start + 3 + k}: expected 'El x y z', got {lines[start + 2 + k][:60]!r}"), end
        sym = toks[0]
        if not sym.isalpha():
            return Failure(rid, f"line {start + 3 + k}: bad element symbol {sym!r}"), end
        try:
            pos[k, 0] = _float(toks[1])
            pos[k, 1] = _float(toks[2])
            pos[k, 2] = _float(toks[3])
        except ValueError as exc:
            return Failure(rid, f"line {start + 3 + k}: {exc}"), end
        symbols.append(sym.capitalize())
    return Record(rid, tuple(symbols), pos), end


def iter_frames(lines: Sequence[str], source: str) -> Iterator[Record | Failure]:
    """All frames of a multi-frame XYZ text; after a bad count line, skip to the next integer line."""
    i, k = 0, 0
    nlines = len(lines)
    while i < nlines:
        if not lines[i].strip():
            i += 1
            continue
        item, nxt = parse_frame(lines, i, f"{source}#frame{k}")
        k += 1
        yield item
        if isinstance(item, Failure) and nxt == i + 1:
            while nxt < nlines and not lines[nxt].strip().isdigit():
                nxt += 1
        i = nxt


def format_xyz(symbols: Sequence[str], pos: np.ndarray, comment: str = "") -> str:
    """One XYZ frame as text (coordinates in Angstrom, 6 decimals)."""
    out = [str(len(symbols)), comment.replace("\n", " ")]
    out += [f"{s:<2s} {x: .6f} {y: .6f} {z: .6f}" for s, (x, y, z) in zip(symbols, np.asarray(pos, dtype=float))]
    return "\n".join(out) + "\n"
