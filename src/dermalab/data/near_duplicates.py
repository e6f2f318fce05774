"""Near-duplicate images: the same photo re-encoded, resized or lightly cropped.

Byte-identical files are caught by their content hash (``data.cache``); a photo saved again
at another JPEG quality or size is not. Atlases and scraped datasets repeat photos that way
(DermNet NZ's subtype folders; Fitzpatrick17k's two source atlases), and a copy on each side
of a split inflates test results just as a shared lesion does.

Each image gets two 64-bit perceptual hashes of its decoded pixels (``imagehash``): pHash, the
signs of the low 8x8 DCT frequencies of a 32x32 grey copy (Zauner, 2010), and dHash, the signs
of horizontal gradients of a 9x8 grey copy (Krawetz, 2013). Two images are near-duplicates when
*both* Hamming distances are at most ``max_distance``: each hash alone lets distinct, similar
photos (two brown lesions on pale skin) collide more often than both together. Near-duplicates
are joined transitively (union-find) into groups that the split keeps together, exactly as
identical files are (:func:`dermalab.data.splits.split_units`).

``bench/near_duplicates.py`` chose the default distance by measurement: re-encoded, resized
and lightly cropped copies against distinct photos of the shared HAM10000, DermNet NZ and
Fitzpatrick17k sets, and the groups it forms on each whole set
(``bench/results/near_duplicates.md``). At 8 bits every re-encoded or resized copy is
found and half to two thirds of those cropped by up to 6% a side; on the clinical sets the
groups stay small (at most 5 photos), while on HAM10000 distinct lesions link into large
groups, so sources with their own lesion ids do not look for near-duplicates unless asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

#: Both perceptual hashes within this many bits (of 64): bench/results/near_duplicates.md.
DEFAULT_MAX_DISTANCE = 8
#: Source formats whose images carry no group ids of their own: near-duplicates are looked
#: for there by default. Sources with lesion/patient ids (HAM10000, ISIC) keep those: their
#: dermoscopy photos share the black vignette of the dermatoscope, which makes distinct lesions
#: collide (bench/results/near_duplicates.md measures it on the whole HAM10000).
AUTO_FORMATS = ("folder", "csv")


def max_distance_for(setting: int | None, source_kind: str) -> int:
    """``data.near_duplicates`` for a source: the setting, or (``None``, auto) the default
    distance for :data:`AUTO_FORMATS` and -1 (off) for the others."""
    if setting is not None:
        return setting
    kinds = source_kind.split("+")  # several sources (data.sources): all must qualify
    return DEFAULT_MAX_DISTANCE if all(k in AUTO_FORMATS for k in kinds) else -1


def perceptual_hashes(image: np.ndarray) -> tuple[int, int]:
    """``(pHash, dHash)`` of an ``(H, W, 3)`` uint8 image, as 64-bit integers."""
    import imagehash

    img = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    p = imagehash.phash(img, hash_size=8)
    d = imagehash.dhash(img, hash_size=8)
    return _as_int(p.hash), _as_int(d.hash)


def _as_int(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in np.asarray(bits).ravel()), 2)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 hash arrays (broadcast)."""
    return np.asarray(np.bitwise_count(np.bitwise_xor(a, b)), np.int64)


@dataclass
class NearDuplicates:
    """Near-duplicate groups of a dataset: ``group_of`` maps each image in a group of two or
    more to its group's id; ``pairs`` lists the linked pairs with their two distances."""

    group_of: dict[str, str] = field(default_factory=dict)
    pairs: list[tuple[str, str, int, int]] = field(default_factory=list)

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group id -> its images (sorted)."""
        out: dict[str, list[str]] = {}
        for sid, g in sorted(self.group_of.items()):
            out.setdefault(g, []).append(sid)
        return out


def find_near_duplicates(ids: Sequence[str], image_of: Callable[[str], np.ndarray],
                         max_distance: int = DEFAULT_MAX_DISTANCE, chunk: int = 2048
                         ) -> NearDuplicates:
    """Hash every image (``image_of(id)`` gives its decoded pixels) and link the pairs whose
    pHash and dHash are both within ``max_distance`` bits."""
    ids = list(ids)
    if max_distance < 0 or len(ids) < 2:
        return NearDuplicates()
    hashes = np.array([perceptual_hashes(image_of(i)) for i in ids], dtype=np.uint64)
    ph, dh = hashes[:, 0], hashes[:, 1]
    parent = list(range(len(ids)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs: list[tuple[str, str, int, int]] = []
    for start in range(0, len(ids), chunk):
        stop = min(start + chunk, len(ids))
        dp = hamming(ph[start:stop, None], ph[None, :])
        dd = hamming(dh[start:stop, None], dh[None, :])
        rows, cols = np.nonzero((dp <= max_distance) & (dd <= max_distance))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c <= i:
                continue
            pairs.append((ids[i], ids[c], int(dp[r, c]), int(dd[r, c])))
            a, b = find(i), find(c)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(len(ids)):
        members.setdefault(find(i), []).append(i)
    group_of = {ids[i]: f"near:{ids[root]}" for root, m in members.items() if len(m) > 1
                for i in m}
    return NearDuplicates(group_of, pairs)
