"""SA-1B image dataset for stage-1 distillation: ``sa_*.jpg`` + ``sa_*.json``, lazy RLE decoding.

Layout: any directory tree under ``root`` holding ``<name>.jpg`` files with a sibling ``<name>.json`` (the official
tar files extract to ``sa_000000/sa_1.jpg`` ...). Indexing lists file names only (no json is opened) and is cached in
a text file, so an 11M-image root is scanned once. Each item decodes only the masks it samples (``max_masks``).

Item (``SA1BDataset[i]``), S = ``image_size``:
    image: float32 (3, S, S), ImageNet-normalised, zero (after normalisation) outside the valid region.
    flipped: bool, whether the horizontal flip was applied.
    teacher_f16: float16 (256, S/16, S/16), only with a ``teacher_cache``: the cached teacher F16 of this view.
    masks: bool (K, S, S), 1 <= K <= max_masks, one object per mask.
    valid_hw: int64 (2,) = (h, w) of the resized, unpadded image in the top-left corner.
    orig_hw: int64 (2,) = (H, W) of the jpg.
    ann_ids: int64 (K,) SA-1B annotation ids of ``masks``.
    path: str, the jpg path.
    skips: dict reason -> count of samples skipped while producing this item (usually empty).

Batch (``collate_sa1b``): see its docstring.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from edgetam_train.data.skips import BadSample, SkipCounter, first_readable, read_json

if TYPE_CHECKING:
    from edgetam_train.data.teacher_cache import TeacherCache

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INDEX_VERSION = "edgetam-train sa1b index v1"


# --------------------------------------------------------------------------------------------------------------------
# Index: list of jpg paths (relative to root) with a sibling json, cached in a text file
# --------------------------------------------------------------------------------------------------------------------


def scan_pairs(root: str | Path, image_ext: str = ".jpg", sidecar_ext: str = ".json") -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of every ``*<image_ext>`` with a sibling ``*<sidecar_ext>``.

    Walks ``root`` recursively with ``os.scandir`` (names only; no file is opened). Hidden entries are ignored.
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
            if name.endswith(image_ext) and name[: -len(image_ext)] + sidecar_ext in names:
                found.append(f"{rel_dir}/{name}" if rel_dir else name)
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in dirs)
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
    files = scan_pairs(root)
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


def rle_runs(counts: str | bytes) -> np.ndarray:
    """int64 run lengths of a COCO compressed RLE string (vectorised re-implementation of ``rleFrString``).

    Each run is coded in 5-bit groups (chars '0'..'o'), bit 0x20 = more groups follow, bit 0x10 of the last group =
    negative; runs from the 4th on are stored as the difference to the run two before. Raises ``ValueError`` on
    characters outside the alphabet or a truncated last run.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts contain characters outside '0'..'o'")
    last = (c & 0x20) == 0  # the group that ends each run
    if not last[-1]:
        raise ValueError("RLE counts end inside a run")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    pos = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its run
    if pos.max() > 11:
        raise ValueError("RLE run longer than 12 groups")
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * (pos[ends] + 1))), x)
    runs = x.copy()
    for parity in (0, 1):  # runs[i] = x[i] + runs[i - 2] for i >= 3 (runs 0, 1, 2 are stored as is)
        first = 2 if parity == 0 else 1
        runs[first::2] = np.cumsum(x[first::2])
    return runs


def check_rle(segmentation: Any, h: int, w: int) -> dict:
    """Validate an SA-1B ``segmentation`` for an h x w image; returns the RLE dict for ``pycocotools.mask.decode``.

    Raises ``ValueError`` naming what is wrong (not a dict, size mismatch, counts not a string, runs that are negative
    or do not sum to h*w). pycocotools itself fills a short RLE with uninitialised memory, hence this check.
    """
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise ValueError("segmentation is not a {'size', 'counts'} dict")
    size = segmentation["size"]
    if list(size) != [h, w]:
        raise ValueError(f"segmentation size {size} != image size [{h}, {w}]")
    counts = segmentation["counts"]
    if not isinstance(counts, (str, bytes)):
        raise ValueError(f"counts must be a compressed RLE string, got {type(counts).__name__}")
    runs = rle_runs(counts)
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs sum to {int(runs.sum())} (negative runs: {bool((runs < 0).any())}), need {h * w}")
    return {"size": [h, w], "counts": counts}


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


_CV2_RGB_FLAGS = (
    cv2.IMREAD_COLOR_RGB if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.IMREAD_COLOR
) | cv2.IMREAD_IGNORE_ORIENTATION


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of a jpg, in stored orientation (EXIF ignored, as the json sizes and RLEs are).

    Decodes with OpenCV (faster than PIL here), but only when the file ends with the JPEG end-of-image marker:
    OpenCV fills a truncated file with grey without an error, so other files go through PIL, which raises on
    truncation. Raises ``BadSample`` missing_image / corrupt_image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise BadSample("missing_image", str(path)) from None
    except OSError as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None
    if data.size >= 4 and data[-2] == 0xFF and data[-1] == 0xD9:
        image = cv2.imdecode(data, _CV2_RGB_FLAGS)
        if image is not None and image.ndim == 3:
            return image if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None


def sample_annotations(num: int, max_masks: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of ``min(num, max_masks)`` annotations drawn without replacement."""
    if num <= max_masks:
        return np.arange(num)
    return np.sort(rng.choice(num, size=max_masks, replace=False))


def resized_hw(h: int, w: int, image_size: int) -> tuple[int, int]:
    """(h', w') after ``A.LongestMaxSize(image_size)`` (its rounding): the valid region of the padded output."""
    scale = image_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_mask_colmajor(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) mask as pycocotools decodes it (Fortran order) to a C-order ``out_hw``.

    ``mask.T`` is a C-contiguous (w, h) view, so it is resized as the transposed image and only the small result is
    transposed back: this skips a full-resolution transpose copy (3.4 MB per SA-1B mask). Nearest-neighbour sampling
    works per axis, so the result equals ``cv2.resize(mask, ..., INTER_NEAREST)`` (what ``A.LongestMaxSize`` does to
    masks) exactly.
    """
    oh, ow = out_hw
    small_t = cv2.resize(mask.T, (oh, ow), interpolation=cv2.INTER_NEAREST) if mask.shape != out_hw else mask.T
    return cv2.transpose(small_t)


def decode_resized(anns: Sequence[Any], h: int, w: int, out_hw: tuple[int, int], json_path: Path) -> np.ndarray:
    """uint8 (K, *out_hw) masks of ``anns``: each RLE is checked, decoded (``pycocotools.mask.decode``, one call per
    mask) and immediately resized, so at most one full-resolution mask exists at a time. Raises ``BadSample`` bad_rle.
    """
    out = np.empty((len(anns), *out_hw), dtype=np.uint8)
    for k, ann in enumerate(anns):
        try:
            rle = check_rle(ann.get("segmentation") if isinstance(ann, dict) else None, h, w)
            full = mask_utils.decode(rle)  # (h, w) uint8, Fortran order
        except (ValueError, TypeError, KeyError) as e:
            raise BadSample("bad_rle", str(json_path), f"annotation {k}: {e}") from None
        out[k] = resize_mask_colmajor(full, out_hw)
    return out


def build_resize(image_size: int) -> A.LongestMaxSize:
    """Image resize: longest side to ``image_size``, area interpolation when shrinking (bilinear when enlarging)."""
    return A.LongestMaxSize(max_size=image_size, area_for_downscale="image", p=1.0)


def build_augment(image_size: int, hflip_p: float) -> A.Compose:
    """Joint image / multi-mask pipeline after resizing: HorizontalFlip(p) -> Normalize (ImageNet) -> PadIfNeeded.

    Padding goes to the bottom/right (``position="top_left"``) with 0 in the masks and 0 in the *normalised* image
    (SAM's convention: pad after normalising, so the padding is the mean colour). The output's
    ``applied_transforms`` lists what ran (it tells whether the flip happened; the teacher cache needs it).
    A teacher cache (``teacher_cache.transform_spec``) supports only these three transforms.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=hflip_p),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
            A.PadIfNeeded(image_size, image_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                          fill_mask=0),
        ],
        save_applied_params=True,
    )


def build_reference_transform(image_size: int, hflip_p: float) -> A.Compose:
    """The plain albumentations pipeline (LongestMaxSize -> HorizontalFlip -> Normalize -> PadIfNeeded) on full-size,
    row-major image and masks. For the same flip decision ``SA1BDataset`` produces exactly its output (checked in the
    tests) while decoding and resizing the masks one at a time in column-major order, which is faster.
    """
    augment = build_augment(image_size, hflip_p)
    return A.Compose([build_resize(image_size), *augment.transforms])


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


class SA1BDataset(Dataset):
    """SA-1B images with up to ``max_masks`` lazily decoded masks each (one training object per mask).

    Args:
        root: directory tree of ``*.jpg`` + sibling ``*.json``.
        image_size: output side S (images are resized to longest side S and padded bottom/right to S x S).
        max_masks: most masks sampled per image (paper: 64).
        hflip_p: horizontal flip probability (the only stage-1 augmentation).
        index_cache: file caching the file list (default ``default_index_cache(root)``).
        split_file: optional text file listing the images to use (see ``read_split_file``); then nothing is scanned.
        files: optional explicit list of relative jpg paths (used by the DataModule's train/val split); wins over
            ``split_file`` and the scan.
        seed: base seed; the masks sampled and the flip depend only on (seed, epoch, index).
        max_skip_rate: threshold of ``SkipCounter`` (config key ``data.max_skip_rate``).
        min_attempts: attempts before the skip rate is checked.
        teacher_cache: a ``TeacherCache`` to read each item's teacher F16 from (``teacher_f16``), for the view
            (original or flipped) the item got; checked by the caller against the image list (``check_data``).
        cache_rows: the cache row of each of ``files`` (its position in the cached image list); default 0..N-1.

    ``set_epoch(epoch)`` changes the per-item randomness; the epoch lives in shared memory, so it reaches DataLoader
    workers that already exist (``persistent_workers``). ``skips`` counts the bad samples seen by this process.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 1024,
        max_masks: int = 64,
        hflip_p: float = 0.5,
        index_cache: str | Path | None = None,
        split_file: str | Path | None = None,
        files: Sequence[str] | None = None,
        seed: int = 0,
        max_skip_rate: float = 0.05,
        min_attempts: int = 20,
        teacher_cache: TeacherCache | None = None,
        cache_rows: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        self.root = Path(root)
        if files is None:
            files = read_split_file(split_file) if split_file is not None else load_index(self.root, index_cache)
        # One numpy bytes array instead of a list of str: DataLoader workers share it copy-on-write without Python
        # refcount writes touching every page (a list of 11M str would be copied into every worker over time).
        self._files = np.array([f.encode() for f in files], dtype=np.bytes_)
        if len(self._files) == 0:
            raise FileNotFoundError(f"no SA-1B images (*.jpg with a sibling *.json) under {self.root} (data.root)")
        self.image_size, self.max_masks, self.hflip_p, self.seed = image_size, max_masks, hflip_p, seed
        self.resize = build_resize(image_size)
        self.augment = build_augment(image_size, hflip_p)
        self.skips = SkipCounter(max_skip_rate=max_skip_rate, min_attempts=min_attempts, name=type(self).__name__)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.teacher_cache = teacher_cache
        self._cache_rows = np.arange(len(self._files)) if cache_rows is None else np.asarray(cache_rows, np.int64)
        if teacher_cache is not None:
            from edgetam_train.data.teacher_cache import transform_spec

            transform_spec(image_size)  # raises if the pipeline has a transform a cache cannot follow
            if len(self._cache_rows) != len(self._files):
                raise ValueError(f"cache_rows has {len(self._cache_rows)} rows for {len(self._files)} files")

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[str]:
        """The relative jpg paths, in index order (builds a list: for inspection, not for per-item use)."""
        return [f.decode() for f in self._files]

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (visible to existing DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch set by ``set_epoch`` (0 initially)."""
        return int(self._epoch.item())

    def paths(self, index: int) -> tuple[Path, Path]:
        """(jpg path, json path) of item ``index``."""
        jpg = self.root / self._files[index].decode()
        return jpg, jpg.with_suffix(".json")

    def decode_selected(self, anns: list, h: int, w: int, rng: np.random.Generator, json_path: Path):
        """Sample up to ``max_masks`` annotations, decode and resize only those.

        Returns (uint8 (K, h', w') masks at the resized size, int64 (K,) annotation ids).
        """
        chosen = sample_annotations(len(anns), self.max_masks, rng)
        picked = [anns[i] for i in chosen]
        ids = np.asarray([a.get("id", -1) if isinstance(a, dict) else -1 for a in picked], dtype=np.int64)
        return decode_resized(picked, h, w, resized_hw(h, w, self.image_size), json_path), ids

    def read_sample(self, index: int, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` and its sampled masks, untransformed: (jpg path, uint8 (H, W, 3) image, uint8 (K, h', w')
        masks at the resized size, int64 (K,) annotation ids). Raises ``BadSample`` (unreadable files, a jpg whose
        size disagrees with its json, no masks)."""
        jpg, json_path = self.paths(index)
        info, anns = read_record(json_path)
        h, w = info["height"], info["width"]
        image = read_image(jpg)
        if image.shape[:2] != (h, w):
            raise BadSample("size_mismatch", str(jpg), f"jpg is {image.shape[1]}x{image.shape[0]}, json says {w}x{h}")
        masks, ids = self.decode_selected(anns, h, w, rng, json_path)
        return jpg, image, masks, ids

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """Read, decode and transform item ``index`` for ``epoch``; raises ``BadSample`` if it cannot be used."""
        rng = np.random.default_rng([self.seed, epoch, index])
        jpg, image, masks, ids = self.read_sample(index, rng)
        h, w = image.shape[:2]
        keep = masks.reshape(len(masks), -1).any(1)  # objects too small to survive the resize are dropped
        if not keep.any():
            raise BadSample("empty_after_transform", str(jpg), f"all {len(keep)} sampled masks vanished when resized")
        if not keep.all():
            masks, ids = masks[keep], ids[keep]
        image = self.resize(image=image)["image"]
        self.augment.set_random_seed(int(rng.integers(2**31)))
        out = self.augment(image=image, masks=masks)
        flipped = any(name == "HorizontalFlip" for name, _ in out["applied_transforms"])
        return {
            "image": torch.from_numpy(out["image"]).permute(2, 0, 1).contiguous(),
            "flipped": flipped,
            "masks": torch.from_numpy(out["masks"]).view(torch.bool),  # values are 0/1: reinterpret, no copy
            "valid_hw": torch.tensor(image.shape[:2], dtype=torch.int64),
            "orig_hw": torch.tensor((h, w), dtype=torch.int64),
            "ann_ids": torch.from_numpy(ids),
            "path": str(jpg),
            **self._cached_teacher(index, flipped),
        }

    def _cached_teacher(self, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        """{"teacher_f16": float16 (256, S/16, S/16)} of item ``index``'s view from the teacher cache, or {} without
        one. The flipped view's F16 is the teacher run on the flipped image (the encoder is not flip-equivariant)."""
        if self.teacher_cache is None:
            return {}
        row = int(self._cache_rows[index])
        return {"teacher_f16": self.teacher_cache.read(row, flipped, self._files[index].decode())}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``, or if it is bad the next readable one (wrapping around); see the module docstring.

        Raises ``SkipRateExceeded`` (a RuntimeError) when too many samples were bad.
        """
        epoch = self.epoch
        return first_readable(lambda i: self.load(i, epoch), index, len(self), self.skips,
                              f"{type(self).__name__} under {self.root}")


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------


def collate_sa1b(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch SA-1B items; objects of all images are concatenated along one axis (no padding).

    Returns, for B images holding N = sum K_i objects:
        images: float32 (B, 3, S, S).
        masks: bool (N, S, S), image 0's objects first, then image 1's, ...
        obj_to_img: int64 (N,), the image index of each object (to gather per-image features for every object).
        num_objects: int64 (B,) = K_i (``masks.split(num_objects.tolist())`` gives the per-image stacks).
        valid_hw: int64 (B, 2); orig_hw: int64 (B, 2); ann_ids: int64 (N,); paths: list[str] (B).
        flipped: bool (B,), which images were flipped.
        teacher_f16: float16 (B, 256, S/16, S/16) cached teacher F16 of each image's view (only when every item
            has one, i.e. the dataset reads a teacher cache).
        skips: dict reason -> count of samples skipped while producing this batch. DataLoader workers hold their own
            ``SkipCounter``s, so this is how the training process sees them: this batch made
            ``len(paths) + sum(skips.values())`` attempts.
    """
    counts = torch.tensor([len(item["masks"]) for item in batch], dtype=torch.int64)
    skips: dict[str, int] = {}
    for item in batch:
        for reason, n in item.get("skips", {}).items():
            skips[reason] = skips.get(reason, 0) + n
    out = {
        "images": torch.stack([item["image"] for item in batch]),
        "masks": torch.cat([item["masks"] for item in batch]),
        "obj_to_img": torch.repeat_interleave(torch.arange(len(batch)), counts),
        "num_objects": counts,
        "valid_hw": torch.stack([item["valid_hw"] for item in batch]),
        "orig_hw": torch.stack([item["orig_hw"] for item in batch]),
        "ann_ids": torch.cat([item["ann_ids"] for item in batch]),
        "paths": [item["path"] for item in batch],
        "flipped": torch.tensor([bool(item.get("flipped", False)) for item in batch]),
        "skips": skips,
    }
    if all("teacher_f16" in item for item in batch):
        out["teacher_f16"] = torch.stack([item["teacher_f16"] for item in batch])
    return out
