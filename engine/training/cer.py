"""Character error rate: edit distance over reference length, summed over a set of clips."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance (substitutions, insertions and deletions each cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[-1]


def cer(pairs: Iterable[tuple[Sequence[str], Sequence[str]]]) -> float:
    """Total edits over total reference characters for ``(reference, hypothesis)`` pairs."""
    edits = chars = 0
    for ref, hyp in pairs:
        edits += edit_distance(ref, hyp)
        chars += len(ref)
    return edits / max(chars, 1)
