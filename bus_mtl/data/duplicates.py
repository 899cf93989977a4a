"""Near-duplicate detection with a 64-bit DCT perceptual hash (pHash) and union-find groups.

pHash: the decoded grayscale image is area-resized to 32×32, its 2-D DCT taken, and the
8×8 lowest frequencies (DC included) compared with their median → 64 bits. Two images are
near-duplicates when the Hamming distance of their hashes is ≤ the threshold.

The default, 10, was chosen on BUSI (780 images; distances are even because the median
splits the 64 coefficients 32/32): every pair inspected at distance ≤ 10 is the same scan
or another frame of the same lesion, while at 12 merely similar scans of different lesions
appear (e.g. ``benign (1)`` vs ``malignant (146)``). At 10, BUSI forms 149 groups holding
335 images, 8 of them crossing classes (Pawłowska et al. 2023 report 235 duplicated images).

A group "crosses classes" (:func:`cross_class_groups`) when its members carry more than one
label: the same lesion filed as benign and as malignant (or, with ``normal="class"`` or
``"seg_only"``, as normal). A group's id is its index in the sorted list
:func:`group_samples` returns, the same index a split file's ``groups`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

#: Hamming distance (of 64 bits) at or below which two images count as near-duplicates.
DEFAULT_DUP_THRESHOLD = 10


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an H×W uint8 image."""
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming_matrix(hashes: Sequence[int]) -> np.ndarray:
    """N×N matrix of Hamming distances between 64-bit hashes."""
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    x = h[:, None] ^ h[None, :]
    bytes_ = x.view(np.uint8).reshape(len(h), len(h), 8)
    return np.unpackbits(bytes_, axis=2).sum(axis=2, dtype=np.int32)


class _UnionFind:
    def __init__(self, items: Sequence[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_pairs(hashes: Mapping[str, int], threshold: int) -> list[tuple[str, str, int]]:
    """All pairs ``(id_a, id_b, distance)`` with distance ≤ ``threshold`` (``threshold < 0``
    disables detection)."""
    if threshold < 0 or len(hashes) < 2:
        return []
    ids = list(hashes)
    d = hamming_matrix([hashes[i] for i in ids])
    a, b = np.nonzero(np.triu(d <= threshold, k=1))
    return [(ids[i], ids[j], int(d[i, j])) for i, j in zip(a, b)]


def group_samples(
    ids: Sequence[str],
    hashes: Mapping[str, int],
    threshold: int,
    patient: Mapping[str, str | None] | None = None,
) -> list[list[str]]:
    """Connected components of near-duplicate pairs united with given patient groups.

    Returns only components of two or more ids, each sorted, sorted by first id. Every id
    not in a returned group is its own group.
    """
    uf = _UnionFind(ids)
    known = {i: hashes[i] for i in ids if i in hashes}
    for a, b, _ in duplicate_pairs(known, threshold):
        uf.union(a, b)
    if patient:
        first: dict[str, str] = {}
        for i in ids:
            g = patient.get(i)
            if g:
                if g in first:
                    uf.union(first[g], i)
                else:
                    first[g] = i
    comps: dict[str, list[str]] = {}
    for i in ids:
        comps.setdefault(uf.find(i), []).append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def cross_class_groups(
    groups: Sequence[Sequence[str]], labels: Mapping[str, int]
) -> list[tuple[int, list[str]]]:
    """``(group id, members)`` of the groups whose members carry more than one label.

    The group id is the index in ``groups``; members without a label in ``labels`` are
    ignored when comparing labels but still listed.
    """
    out = []
    for k, group in enumerate(groups):
        if len({labels[i] for i in group if i in labels}) > 1:
            out.append((k, list(group)))
    return out
