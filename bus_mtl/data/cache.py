"""Decode cache: each image + mask decoded, OR-ed and resized once, stored as one ``.npy``.

Layout under the cache dir (``$BUS_MTL_CACHE`` or ``~/.cache/bus_mtl``, never the data
folder): ``decoded/s{size}/<kk>/<key>.npy`` holds a 2×size×size uint8 array (image, mask)
squashed to the square, ``decoded/s{size}_letterbox/...`` the same letterboxed (see
:func:`~bus_mtl.data.io.fit_to_square`), so one mode's entry is never served for the other;
``meta/<kk>/<key>.json`` holds the full-resolution facts (size, mask coverage, pHash). The
key hashes every source file's absolute path, mtime and byte size, so editing or replacing
a file invalidates its entry. Entries are written to a temporary file and renamed, so
concurrent workers and processes never read half a file. The object holds only paths, so
it pickles into DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bus_mtl.data.duplicates import phash
from bus_mtl.data.io import check_resize, read_image, read_masks, resize_pair
from bus_mtl.data.paths import default_cache_dir
from bus_mtl.data.sample import Sample

CACHE_VERSION = 1


@dataclass(frozen=True)
class SampleInfo:
    """Facts about one decoded sample at its original resolution."""

    height: int
    width: int
    coverage: float  # fraction of lesion pixels
    phash: int


def sample_key(sample: Sample) -> str:
    """Hash of the sample's files (path, mtime, size); raises ``OSError`` if one is missing."""
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for p in (sample.image, *sample.masks):
        st = os.stat(p)
        h.update(f"|{Path(p).resolve()}|{st.st_mtime_ns}|{st.st_size}".encode())
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DecodeCache:
    """Decoded, resized image/mask pairs keyed by source files, size and resize mode.

    Args:
        image_size: side of the square arrays stored.
        root: cache folder (default :func:`~bus_mtl.data.paths.default_cache_dir`).
        resize: ``"squash"`` or ``"letterbox"`` (:func:`~bus_mtl.data.io.fit_to_square`).
    """

    def __init__(
        self, image_size: int, root: str | Path | None = None, resize: str = "squash"
    ) -> None:
        if image_size < 8:
            raise ValueError(f"image_size: must be at least 8, got {image_size}")
        self.image_size = image_size
        self.resize = check_resize(resize)
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def pixel_path(self, key: str) -> Path:
        """Where the resized pair of the sample with cache key ``key`` is stored."""
        # squash keeps the folder name it had before letterbox existed: old caches stay valid.
        mode = "" if self.resize == "squash" else f"_{self.resize}"
        return self.root / "decoded" / f"s{self.image_size}{mode}" / key[:2] / f"{key}.npy"

    def _meta_path(self, key: str) -> Path:
        return self.root / "meta" / key[:2] / f"{key}.json"

    def decode(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, SampleInfo]:
        """Decode from the source files (no cache): full-size image, mask and info.

        Raises :class:`~bus_mtl.data.errors.DataError` naming the file at fault.
        """
        image = read_image(sample.image)
        mask = read_masks(sample.masks, image.shape)
        info = SampleInfo(
            height=int(image.shape[0]),
            width=int(image.shape[1]),
            coverage=float(mask.mean()),
            phash=phash(image),
        )
        return image, mask, info

    def inspect(self, sample: Sample, key: str | None = None) -> SampleInfo:
        """Info for a sample, decoding (and filling the cache) only on a miss."""
        key = key or sample_key(sample)
        meta = self._meta_path(key)
        pixels = self.pixel_path(key)
        if meta.is_file() and pixels.is_file():
            try:
                return SampleInfo(**json.loads(meta.read_text()))
            except (ValueError, TypeError):
                pass  # corrupt entry: rebuild it
        image, mask, info = self.decode(sample)
        self._store(key, image, mask)
        _atomic_write(meta, lambda fh: fh.write(json.dumps(asdict(info)).encode()))
        return info

    def _store(self, key: str, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        img, msk = resize_pair(image, mask, self.image_size, self.resize)
        arr = np.stack([img, msk])
        _atomic_write(self.pixel_path(key), lambda fh: np.save(fh, arr))
        return arr

    def load(self, sample: Sample, key: str | None = None) -> np.ndarray:
        """2×size×size uint8 array (image, mask in {0,1}); decodes on a miss."""
        key = key or sample_key(sample)
        try:
            return np.load(self.pixel_path(key))
        except (OSError, ValueError):
            image, mask, _ = self.decode(sample)
            return self._store(key, image, mask)
