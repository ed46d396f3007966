"""The classes ``fmkit sample`` and ``evaluate`` are asked for (``--class D``, ``--per-class K``): the count of
samples and the class of each, in class order (a grid of them shows one row per class)."""

from __future__ import annotations

import torch

from fmkit.errors import FmkitError

BOTH = "--class / --per-class"


def parse_classes(values: list[str]) -> list[int]:
    """``--class`` values, each one class or a comma list (``3``, ``1,7``), as sorted distinct ints."""
    out: set[int] = set()
    for v in values:
        for part in str(v).split(","):
            try:
                out.add(int(part.strip()))
            except ValueError:
                raise FmkitError(f"--class {part.strip()!r} is not a class number", where="--class",
                                 fix="give class numbers, e.g. --class 3 or --class 1,7") from None
    return sorted(out)


def even_labels(classes: list[int], n: int) -> torch.Tensor:
    """``n`` labels [n] (int64) spread evenly over ``classes`` in their order; the first ``n % len(classes)``
    classes get one more."""
    c = len(classes)
    counts = torch.tensor([n // c + (i < n % c) for i in range(c)])
    return torch.repeat_interleave(torch.tensor(classes, dtype=torch.long), counts)


def requested_classes(classes: list[str] | None, per_class: int | None, n: int | None, num_classes: int | None,
                      default_n: int, max_n: int) -> tuple[int, torch.Tensor | None]:
    """The sample count and the class of every sample that the command line asks for.

    Args:
        classes: the ``--class`` values (``None`` or empty: not given).
        per_class: ``--per-class K``: K samples of every class 0..C-1 (C = ``num_classes``).
        n: ``-n``; None: ``K * C`` with ``--per-class``, else ``default_n``.
        num_classes: the dataset's ``info.num_cond_classes`` (None: unconditional data).
        default_n: the count when neither ``-n`` nor ``--per-class`` gives one.
        max_n: the most samples one command makes.

    Returns:
        ``(n, labels)``: labels [n] in class order, or None when no class was asked for.
    """
    if not classes and per_class is None:
        return (default_n if n is None else n), None
    if classes and per_class is not None:
        raise FmkitError("--class and --per-class were both given", where=BOTH,
                         fix="give --class D (samples of the classes given) or --per-class K (K of every class)")
    where = "--class" if classes else "--per-class"
    if num_classes is None:
        raise FmkitError(f"{where} needs a conditional run, and this run's data has no condition classes (its "
                         "info.num_cond_classes is None)", where=where,
                         fix=f"drop {where}; to choose classes, train a recipe on labelled data (e.g. the toy "
                             "datasets' data.conditional: true)")
    if per_class is not None:
        total = per_class * num_classes
        if n is not None and n != total:
            raise FmkitError(f"-n {n} contradicts --per-class {per_class}: {per_class} samples of each of the "
                             f"{num_classes} classes are {total}", where="-n / --per-class",
                             fix=f"drop -n (--per-class sets the count) or give -n {total}")
        if total > max_n:
            raise FmkitError(f"--per-class {per_class} asks for {total} samples ({num_classes} classes), more than "
                             f"the {max_n} one command makes", where="--per-class", fix="ask for fewer per class")
        return total, even_labels(list(range(num_classes)), total)
    wanted = parse_classes(classes or [])
    bad = [c for c in wanted if not 0 <= c < num_classes]
    if bad:
        raise FmkitError(f"class {bad[0]} is out of range: this run's data has classes 0 to {num_classes - 1}",
                         where="--class", fix=f"give classes from 0 to {num_classes - 1}")
    n = default_n if n is None else n
    if n < len(wanted):
        raise FmkitError(f"-n {n} is fewer than the {len(wanted)} classes given, so some would get no sample",
                         where="-n / --class", fix=f"give -n {len(wanted)} or more, or fewer classes")
    return n, even_labels(wanted, n)
