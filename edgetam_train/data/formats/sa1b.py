"""SA-1B on disk: ``sa_*.jpg`` + ``sa_*.json`` pairs, the cached file index, split files and the json record.

Layout: any directory tree under ``root`` holding ``<name>.jpg`` files with a sibling ``<name>.json`` (the official
tar files extract to ``sa_000000/sa_1.jpg`` ...). Indexing lists file names only (no json is opened) and is cached in
a text file, so an 11M-image root is scanned once. Masks are compressed RLEs (:mod:`edgetam_train.data.formats.rle`).
The training dataset built on this is :class:`edgetam_train.data.datasets.sa1b.SA1BDataset`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from edgetam_train.data.skips import BadSample, read_json

log = logging.getLogger(__name__)

INDEX_VERSION = "edgetam-train sa1b index v1"


# --------------------------------------------------------------------------------------------------------------------
# Index: list of jpg paths (relative to root) with a sibling json, cached in a text file
# --------------------------------------------------------------------------------------------------------------------


def scan_pairs(root: str | Path, image_ext: str = ".jpg", sidecar_ext: str = ".json",
               unpaired: list[str] | None = None) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of every ``*<image_ext>`` with a sibling ``*<sidecar_ext>``.

    Walks ``root`` recursively with ``os.scandir`` (names only; no file is opened). Hidden entries are ignored.
    ``unpaired``, when given, receives the images left out because their sidecar is missing (sorted).
    """
    root = str(root)
    found: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        names, dirs = set(), []
        with os.scandir(os.path.join(root, rel_dir)) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    dirs.append(entry.name)
                else:
                    names.add(entry.name)
        for name in names:
            if name.endswith(image_ext):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if name[: -len(image_ext)] + sidecar_ext in names:
                    found.append(rel)
                elif unpaired is not None:
                    unpaired.append(rel)
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in dirs)
    if unpaired is not None:
        unpaired.sort()
    return sorted(found)


def root_fingerprint(root: str | Path) -> str:
    """Cheap change detector: sha1 over the names of ``root``'s entries and the mtimes of its sub-directories.

    Adding or removing files in ``root`` or in one of its direct sub-directories (the SA-1B tar layout) changes it;
    changes deeper down are not seen (delete the cache file then). Hidden entries (like the cache file) are ignored.
    """
    h = hashlib.sha1()
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        h.update(f"{entry.name}:{entry.stat().st_mtime_ns if entry.is_dir() else ''}\n".encode())
    return h.hexdigest()[:16]


def default_index_cache(root: str | Path) -> Path:
    """``<root>/.edgetam_index.txt`` if ``root`` is writable, else
    ``$XDG_CACHE_HOME/edgetam_train/sa1b_index_<hash of root>.txt`` (``~/.cache`` without XDG_CACHE_HOME)."""
    root = Path(root).resolve()
    if os.access(root, os.W_OK):
        return root / ".edgetam_index.txt"
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "edgetam_train" / f"sa1b_index_{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.txt"


def _read_index_cache(path: Path, root: Path, fingerprint: str) -> list[str] | None:
    """The cached file list if ``path`` exists and its header matches (version, root, fingerprint, count), else None."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    expected = [f"# {INDEX_VERSION}", f"# root: {root}", f"# fingerprint: {fingerprint}"]
    if len(lines) < 4 or lines[:3] != expected or not lines[3].startswith("# count: "):
        return None
    files = lines[4:]
    return files if str(len(files)) == lines[3][len("# count: ") :] else None


def load_index(root: str | Path, index_cache: str | Path | None = None) -> list[str]:
    """Sorted relative jpg paths under ``root`` (see ``scan_pairs``), from ``index_cache`` when it matches.

    ``index_cache`` defaults to ``default_index_cache(root)``. A missing or stale cache is rebuilt and written
    atomically (safe when several ranks build it at once); an unwritable cache location only logs a warning.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"SA-1B root {root} is not a directory (config key data.root)")
    cache = Path(index_cache) if index_cache is not None else default_index_cache(root)
    fingerprint = root_fingerprint(root)
    files = _read_index_cache(cache, root, fingerprint)
    if files is not None:
        return files
    unpaired: list[str] = []
    files = scan_pairs(root, unpaired=unpaired)
    if unpaired:  # counted once, here: the index (and so every epoch) leaves them out
        log.warning("SA-1B index of %s: %d jpg file(s) without a sibling json left out (missing_json), e.g. %s",
                    root, len(unpaired), ", ".join(str(root / u) for u in unpaired[:5]))
    header = f"# {INDEX_VERSION}\n# root: {root}\n# fingerprint: {fingerprint}\n# count: {len(files)}\n"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(header + "".join(f"{f}\n" for f in files))
        os.replace(tmp, cache)
        log.info("indexed %d SA-1B images under %s into %s", len(files), root, cache)
    except OSError as e:
        log.warning("could not write the SA-1B index cache %s (%s); the root will be re-scanned next time", cache, e)
    return files


def read_split_file(path: str | Path) -> list[str]:
    """Relative jpg paths listed in ``path``, one per line ('#' comments and blank lines ignored).

    A line may name the jpg (``sa_000000/sa_1.jpg``) or its stem (``sa_000000/sa_1``).
    """
    files = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            files.append(line if line.endswith(".jpg") else f"{line}.jpg")
    return files


# --------------------------------------------------------------------------------------------------------------------
# Reading one sample
# --------------------------------------------------------------------------------------------------------------------


def read_record(json_path: Path) -> tuple[dict, list]:
    """Parse an SA-1B json; returns (image info, annotations).

    Raises ``BadSample`` missing_json / bad_json / no_masks.
    """
    record = read_json(json_path)
    if not isinstance(record, dict) or not isinstance(record.get("annotations"), list):
        raise BadSample("bad_json", str(json_path), "expected {'image': {...}, 'annotations': [...]}")
    info = record.get("image")
    if not isinstance(info, dict) or not isinstance(info.get("height"), int) or not isinstance(info.get("width"), int):
        raise BadSample("bad_json", str(json_path), "expected image.height and image.width integers")
    if not record["annotations"]:
        raise BadSample("no_masks", str(json_path))
    return info, record["annotations"]


def sample_annotations(num: int, max_masks: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of ``min(num, max_masks)`` annotations drawn without replacement."""
    if num <= max_masks:
        return np.arange(num)
    return np.sort(rng.choice(num, size=max_masks, replace=False))


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------


