"""Reading and writing XYZ text: plain multi-frame XYZ and QM9's extended XYZ.

Plain frame: ``n`` / comment / ``n`` lines ``El x y z`` (Angstrom). QM9's extended XYZ
(Ramakrishnan et al. 2014) puts ``gdb <id> <15 properties>`` on the comment line, a 5th column
(Mulliken charge) on the atom lines, may write numbers as ``1.5*^-6`` (Mathematica exponent),
and appends frequencies / SMILES / InChI lines after the atoms (ignored here). An atom line may
give the element as its atomic number (``6 x y z``).

A frame whose count does not match its atom lines is unreadable as a whole (one failure, named by
its QM9 id when the comment has one); reading goes on at the next count line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fmkit_molecules.elements import PERIODIC

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


def _count(line: str) -> int | None:
    """The atom count of a count line (a bare positive integer), else None."""
    s = line.strip()
    return int(s) if s.isdecimal() and int(s) > 0 else None


def _atom_tokens(line: str) -> list[str] | None:
    """The tokens of a line shaped like an atom line (``El x ...`` or ``Z x ...``), else None.

    Shape only (the numbers are checked when parsed), so that count lines, QM9 comment lines
    (``gdb 1 ...``) and QM9's frequency / SMILES / InChI lines are never taken for atoms.
    """
    toks = line.split()
    if len(toks) < 2 or not ((toks[0].isalpha() and len(toks[0]) <= 2) or toks[0].isdecimal()):
        return None
    try:
        float(toks[1].replace("*^", "e"))
    except ValueError:
        return None
    return toks


def _symbol(tok: str) -> str:
    """An element symbol from a symbol (``cl`` -> ``Cl``) or an atomic number (``6`` -> ``C``).

    An unknown atomic number stays as written; the vocabulary check then names it.
    """
    if tok.isdecimal():
        z = int(tok)
        return PERIODIC[z] if 0 < z < len(PERIODIC) else tok
    return tok.capitalize()


def _atoms(rows: Sequence[list[str]], rid: str, first_line: int) -> Record | Failure:
    """A Record from the token lists of its atom lines (``first_line``: 1-based line of the first)."""
    pos = np.empty((len(rows), 3), dtype=np.float64)
    symbols: list[str] = []
    for k, toks in enumerate(rows):
        if len(toks) < 4:
            return Failure(rid, f"line {first_line + k}: expected 'El x y z', got {' '.join(toks)[:60]!r}")
        try:
            pos[k] = [_float(toks[1]), _float(toks[2]), _float(toks[3])]
        except ValueError as exc:
            return Failure(rid, f"line {first_line + k}: {exc}")
        symbols.append(_symbol(toks[0]))
    far = np.abs(pos).max(initial=0.0)
    if far > MAX_COORD:
        k = int(np.abs(pos).max(axis=1).argmax())
        return Failure(rid, f"line {first_line + k}: coordinate {far:.3g} Å is beyond {MAX_COORD:g} Å (XYZ "
                            "coordinates are in Ångström: a unit or format error)")
    if len(rows) > 1:
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        d[np.diag_indices(len(rows))] = np.inf
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        if d[i, j] < MIN_DISTANCE:
            return Failure(rid, f"lines {first_line + min(i, j)} and {first_line + max(i, j)}: two atoms "
                                f"{d[i, j]:.3g} Å apart (below {MIN_DISTANCE:g} Å: atoms on one point)")
    return Record(rid, tuple(symbols), pos)


#: |coordinate| in Å beyond which a record is refused: the largest QM9 molecule spans ~20 Å, and a
#: number like 1e30 is a unit or format error that would poison every batch it lands in
MAX_COORD = 1e4
#: the closest two atoms may be, in Å (the shortest bond, H-H, is 0.74 Å): closer is atoms on one point
MIN_DISTANCE = 0.1


def parse_frame(lines: Sequence[str], start: int, fallback_id: str) -> tuple[Record | Failure, int]:
    """Parse the frame that begins at ``lines[start]``; return it (or a Failure) and the index after its atoms.

    Every atom-shaped line after the comment is read, so a count that does not match the atom lines
    (a cut-off molecule, or one that would swallow the next frame) is a Failure, never a wrong molecule.
    A count line that is not a positive integer consumes just that line (the caller resyncs).
    """
    n = _count(lines[start])
    if n is None:
        return Failure(fallback_id, f"line {start + 1}: expected an atom count, got {lines[start].strip()[:40]!r}"), start + 1
    rid = _record_id(lines[start + 1] if start + 1 < len(lines) else "", fallback_id)
    rows: list[list[str]] = []
    end = start + 2
    while end < len(lines) and (toks := _atom_tokens(lines[end])) is not None:
        rows.append(toks)
        end += 1
    if len(rows) != n:
        return Failure(rid, f"line {start + 1}: the count line says {n} atoms, {len(rows)} atom lines follow"), end
    return _atoms(rows, rid, start + 3), end


def _next_count(lines: Sequence[str], i: int) -> int:
    """Index of the first count line at or after ``i`` (``len(lines)`` if none)."""
    while i < len(lines) and _count(lines[i]) is None:
        i += 1
    return i


def _trailing(lines: Sequence[str], start: int, stop: int, source: str, gap: int = 0) -> tuple[int | None, list[Failure]]:
    """Atom lines among ``lines[start:stop]``, the lines after a frame's atoms that are not a frame.

    QM9's extended XYZ puts frequency / SMILES / InChI lines there (no atom lines). Atom lines after at
    least two other lines (a header and a comment) are a record whose count line is broken: a lost
    molecule. Atom lines closer to the frame continue it: their line number is returned first.
    """
    attached: int | None = None
    lost: list[Failure] = []
    for j in range(start, stop):
        if _atom_tokens(lines[j]) is None:
            gap += 1
            continue
        if gap >= 2:
            rid = next((r for r in (_record_id(lines[k], "") for k in (j - 1, j - 2) if k >= start) if r),
                       f"{source}#line{j + 1}")
            got = f" (line {j - 1}: {lines[j - 2].strip()[:40]!r})" if j - 2 >= start else ""
            lost.append(Failure(rid, f"line {j + 1}: atom lines without a count line before them{got}"))
        elif gap == 1 and not lost and attached is None:
            attached = j + 1
        gap = 0
    return attached, lost


def iter_frames(lines: Sequence[str], source: str) -> Iterator[Record | Failure]:
    """All frames of a multi-frame XYZ text: one Record or one Failure per molecule.

    A frame is a count line (a bare integer), a comment and the atom lines; the lines after them up to
    the next count line (QM9's trailing lines, blanks) belong to it. So a bad frame is one Failure,
    named by its QM9 id where the comment has one, and reading resumes at the next count line.
    """
    i = _next_count(lines, 0)
    yield from _trailing(lines, 0, i, source, gap=2)[1]  # atom lines before the first count line
    k = 0
    while i < len(lines):
        item, end = parse_frame(lines, i, f"{source}#frame{k}")
        k += 1
        nxt = _next_count(lines, end)
        attached, lost = _trailing(lines, end, nxt, source)
        if attached is not None and isinstance(item, Record):
            item = Failure(item.id, f"line {attached}: more atom lines after the {len(item.symbols)} that line {i + 1} announces")
        yield item
        yield from lost
        i = nxt


def format_xyz(symbols: Sequence[str], pos: np.ndarray, comment: str = "") -> str:
    """One XYZ frame as text (coordinates in Angstrom, 6 decimals)."""
    out = [str(len(symbols)), comment.replace("\n", " ")]
    out += [f"{s:<2s} {x: .6f} {y: .6f} {z: .6f}" for s, (x, y, z) in zip(symbols, np.asarray(pos, dtype=float))]
    return "\n".join(out) + "\n"
