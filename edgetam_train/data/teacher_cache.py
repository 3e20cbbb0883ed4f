"""Cache of the frozen teacher's F16 for stage-1 distillation: computed once (``edgetam-cache-teacher``), read by the
SA-1B loader instead of running the teacher in every training step (config ``data.teacher_cache=<dir>``).

In stage 1 the teacher only supplies F16 (the stride-16 image-encoder map, (256, S/16, S/16)); the task loss uses the
ground truth. F16 depends on the image alone, and the only random stage-1 augmentation is the horizontal flip, so two
views per image cover every training sample: ``orig`` (the deterministic S×S resize + normalise) and ``flip`` (the
teacher run on the flipped image; the feature map of the original is *not* flipped, the encoder is not equivariant).

Layout of a cache directory::

    manifest.json                           what was cached (``CacheSpec.fields``) and whether every shard is written
    shards/000/000000.safetensors ...       shard s = images [s*K, (s+1)*K) of the image list, in directory s // 1000

A shard holds float16 tensors ``orig`` and (unless the cache was built with ``--no-flip``) ``flip``, each
(k, 256, S/16, S/16), row r = image s*K + r; its header metadata has ``paths`` (json list of the k relative jpg paths,
checked on every read) and ``bad`` (rows whose jpg could not be read when caching; zeros are stored there).

Why safetensors shards: a header plus raw little-endian arrays, memory-mapped by ``safe_open``, so a DataLoader worker
reads one image's rows (2 MiB per view at 1024²) without reading or unpickling the shard; no pickle anywhere (safe to
load files from elsewhere); random access in any order (a tar/webdataset stream would force shard-level shuffling and
change the sampler); one file per K images (default 64: 256 MiB at 1024² with both views) keeps the file count at N/K
(~170k for SA-1B's 11M images, spread over sub-directories of 1000) and is the unit of resuming and of the round-robin
split across ranks. Size: 4 MiB per image at 1024² with both views (fp16), i.e. ~4 TiB per million images.

The image list is the one training uses (``load_index(root)`` or the ``split_file``, before the ``val_fraction``
split), and a cache row is the image's position in it; the manifest stores its sha256 fingerprint, the teacher
(architecture + checkpoint sha256, or "random-init"), the image size and the transform, and a reader refuses a
mismatch naming the field, the cache's value and the expected one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgetam_train.config import flatten_dict
from edgetam_train.data.skips import BadSample
from edgetam_train.data.transforms import transform_spec
from edgetam_train.models.checkpoint import file_sha256

log = logging.getLogger(__name__)

FORMAT = "edgetam-train teacher F16 cache v1"
MANIFEST = "manifest.json"
RANDOM_INIT = "random-init"
VIEWS = ("orig", "flip")
SHARDS_PER_DIR = 1000
F16_CHANNELS = 256
F16_STRIDE = 16


class TeacherCacheMismatch(ValueError):
    """The cache was made for another teacher, image size, transform or image set than the one asked for."""


# --------------------------------------------------------------------------------------------------------------------
# What identifies a cache
# --------------------------------------------------------------------------------------------------------------------


def image_set_fingerprint(files: Sequence[str]) -> str:
    """sha256 hex of the relative jpg paths in order, each followed by a newline (identifies the image list and its
    order); hashed in chunks of 100k paths (11M SA-1B paths: a few seconds)."""
    h = hashlib.sha256()
    for start in range(0, len(files), 100_000):
        h.update("".join(f"{f}\n" for f in files[start:start + 100_000]).encode())
    return h.hexdigest()


def teacher_arch(net_cfg: Mapping[str, Any]) -> str:
    """The teacher architecture named by its model config tree: the trunk name (``sam2_hiera_base_plus`` ...)."""
    try:
        return str(net_cfg["image_encoder"]["trunk"]["name"])
    except (KeyError, TypeError):
        raise ValueError("teacher config has no image_encoder.trunk.name (expected a SAM 2.1 model tree such as "
                         "configs/arch/sam2.1_hiera_b+.yaml)") from None


def checkpoint_id(checkpoint: str | Path | None) -> str:
    """sha256 of the teacher checkpoint file, or ``"random-init"`` without one."""
    return file_sha256(checkpoint) if checkpoint else RANDOM_INIT


def build_spec(*, arch: str, checkpoint_sha256: str, image_size: int, files: Sequence[str], views: Sequence[str],
               shard_size: int) -> dict[str, Any]:
    """The manifest fields that must match between a cache and its use (see the module docstring)."""
    side = image_size // F16_STRIDE
    return {
        "format": FORMAT,
        "teacher": {"arch": arch, "checkpoint_sha256": checkpoint_sha256},
        "image_size": int(image_size),
        "transform": transform_spec(image_size),
        "feature": {"name": "F16", "shape": [F16_CHANNELS, side, side], "dtype": "float16"},
        "images": {"count": len(files), "fingerprint": image_set_fingerprint(files)},
        "views": list(views),
        "shard_size": int(shard_size),
    }


def spec_mismatches(cache: Mapping[str, Any], expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted field, cache value, expected value) for every field of ``expected`` that ``cache`` differs in."""
    have = flatten_dict(cache)
    return [(k, have.get(k, "<absent>"), v) for k, v in flatten_dict(expected).items() if have.get(k, "<absent>") != v]


def _shorten(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def raise_on_mismatch(where: str | Path, cache: Mapping[str, Any], expected: Mapping[str, Any], hint: str) -> None:
    """Raise ``TeacherCacheMismatch`` naming each differing field with the cache's and the expected value."""
    bad = spec_mismatches(cache, expected)
    if bad:
        lines = "\n".join(f"  {k}: cache has {_shorten(c)}, expected {_shorten(e)}" for k, c, e in bad)
        raise TeacherCacheMismatch(f"teacher cache {where} does not match {hint}:\n{lines}\nBuild a cache for this "
                                   "setting with edgetam-cache-teacher, or point data.teacher_cache at the matching "
                                   "one (or set data.teacher_cache=null to run the teacher live).")


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def shard_path(directory: str | Path, shard: int) -> Path:
    """``<directory>/shards/<shard // 1000:03d>/<shard:06d>.safetensors``."""
    return Path(directory) / "shards" / f"{shard // SHARDS_PER_DIR:03d}" / f"{shard:06d}.safetensors"


def num_shards(count: int, shard_size: int) -> int:
    """Shards needed for ``count`` images, ``shard_size`` per shard."""
    return (count + shard_size - 1) // shard_size


def written_shards(directory: str | Path) -> set[int]:
    """Indices of the shard files present (written atomically, so a present file is complete)."""
    found: set[int] = set()
    root = Path(directory) / "shards"
    if not root.is_dir():
        return found
    for sub in os.scandir(root):
        if sub.is_dir():
            for entry in os.scandir(sub.path):
                stem, _, ext = entry.name.partition(".")
                if ext == "safetensors" and stem.isdigit():
                    found.add(int(stem))
    return found


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a unique temporary file and ``os.replace`` (safe with concurrent writers)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_shard(directory: str | Path, shard: int, views: Mapping[str, torch.Tensor], paths: Sequence[str],
                bad_rows: Sequence[int]) -> Path:
    """Write one shard atomically: ``views`` {name: float16 (k, 256, h, w)}, ``paths`` its k relative jpg paths."""
    from safetensors.torch import save_file

    path = shard_path(directory, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, t in views.items():
        if t.dtype != torch.float16 or t.shape[0] != len(paths):
            raise ValueError(f"shard {shard} view {name}: expected float16 with {len(paths)} rows, got {t.dtype} "
                             f"{tuple(t.shape)}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in views.items()}, str(tmp),
              metadata={"format": FORMAT, "paths": json.dumps(list(paths)), "bad": json.dumps(list(bad_rows))})
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a cache; ``FileNotFoundError`` / ``ValueError`` naming the file otherwise."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: data.teacher_cache must be a directory written by "
                                "edgetam-cache-teacher")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid json ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


class TeacherCache:
    """Read access to a finished cache; picklable (DataLoader workers open their own memory maps).

    Args:
        directory: the cache directory (``data.teacher_cache``).
        max_open: shards kept open (memory-mapped) per process; older ones are closed.

    Raises ``FileNotFoundError`` / ``ValueError`` for a missing or foreign manifest, and ``RuntimeError`` for an
    unfinished cache (naming how many shards are missing).
    """

    def __init__(self, directory: str | Path, max_open: int = 16) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            total = num_shards(self.manifest["images"]["count"], self.manifest["shard_size"])
            done = len(written_shards(self.directory))
            raise RuntimeError(f"teacher cache {self.directory} is unfinished ({done} of {total} shards written): "
                               "run edgetam-cache-teacher again with the same arguments to complete it")
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[Any, list[str], set[int]]] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def views(self) -> list[str]:
        return list(self.manifest["views"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    def __len__(self) -> int:
        return int(self.manifest["images"]["count"])

    # ------------------------------------------------------------------ checks
    def check_data(self, image_size: int, files: Sequence[str], hflip_p: float) -> None:
        """Refuse (``TeacherCacheMismatch``) a cache made for another image size, transform or image list, or one
        without the flipped view when training flips (``hflip_p`` > 0)."""
        expected = {"image_size": int(image_size), "transform": transform_spec(image_size),
                    "images": {"count": len(files), "fingerprint": image_set_fingerprint(files)}}
        hint = (f"the SA-1B data (data.image_size={image_size}, {len(files)} images from data.root / "
                "data.split_file)")
        if "pad" in self.manifest.get("transform", {}):
            raise TeacherCacheMismatch(
                f"teacher cache {self.directory / MANIFEST} was built with the old letterbox transform (longest side "
                f"to {self.manifest.get('image_size')}, padded bottom/right); training now resizes every image to "
                f"{image_size}x{image_size} (stretched, as SAM 2 trains), so its F16 no longer matches the student's "
                "input. Rebuild it with edgetam-cache-teacher (same arguments, a new --out), or set "
                "data.teacher_cache=null to run the teacher live.")
        raise_on_mismatch(self.directory / MANIFEST, self.manifest, expected, hint)
        if hflip_p > 0 and "flip" not in self.views:
            raise TeacherCacheMismatch(
                f"teacher cache {self.directory / MANIFEST}: views is {self.views} (built with --no-flip) but "
                f"data.hflip_p={hflip_p} flips images: rebuild it with both views or set data.hflip_p=0")

    def check_teacher(self, arch: str, checkpoint_sha256: str) -> None:
        """Refuse (``TeacherCacheMismatch``) a cache of another teacher architecture or checkpoint."""
        expected = {"teacher": {"arch": arch, "checkpoint_sha256": checkpoint_sha256}}
        raise_on_mismatch(self.directory / MANIFEST, self.manifest, expected, "the configured teacher (model.teacher)")

    # ------------------------------------------------------------------ reads
    def _shard(self, shard: int) -> tuple[Any, list[str], set[int]]:
        from safetensors import safe_open

        if self._pid != os.getpid():  # forked (DataLoader worker): do not share the parent's handles
            self._open, self._pid = OrderedDict(), os.getpid()
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = shard_path(self.directory, shard)
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache shard {path} is missing (the manifest says the cache is complete;"
                                    " re-run edgetam-cache-teacher to rewrite it)")
        handle = safe_open(str(path), framework="pt")
        meta = handle.metadata() or {}
        entry = (handle, json.loads(meta.get("paths", "[]")), set(json.loads(meta.get("bad", "[]"))))
        self._open[shard] = entry
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return entry

    def read(self, row: int, flipped: bool, path: str | None = None) -> torch.Tensor:
        """float16 (256, S/16, S/16) teacher F16 of image ``row`` of the image list, original or flipped view.

        ``path`` (the relative jpg path the caller loaded) is checked against the shard's record. Raises
        ``BadSample("corrupt_image")`` for an image that could not be read when the cache was built.
        """
        view = "flip" if flipped else "orig"
        if view not in self.views:
            raise ValueError(f"teacher cache {self.directory} has no {view!r} view (views: {self.views})")
        if not 0 <= row < len(self):
            raise IndexError(f"teacher cache {self.directory}: row {row} outside its {len(self)} images")
        shard, r = divmod(row, self.shard_size)
        handle, paths, bad = self._shard(shard)
        if path is not None and paths[r] != path:
            raise RuntimeError(f"teacher cache {shard_path(self.directory, shard)} row {r} holds {paths[r]}, not "
                               f"{path}: the image list changed since the cache was built")
        if r in bad:
            raise BadSample("corrupt_image", paths[r], "unreadable when the teacher cache was built")
        return handle.get_slice(view)[r]


def check_teacher_config(directory: str | Path, teacher_cfg: Mapping[str, Any] | None) -> None:
    """Refuse (``TeacherCacheMismatch``) a cache whose teacher is not the configured one (``model.teacher``: its
    ``net`` tree and ``checkpoint``); the teacher itself is never built.

    The architecture is always compared. The checkpoint is compared by sha256 when the configured file exists; a
    configured file that is absent here (weights not copied to this machine) is accepted for a cache of real weights
    with a warning, and refused for a random-init cache; no checkpoint with ``allow_random_init`` expects a
    random-init cache. With ``model.teacher=null`` nothing can be compared (a warning says so).
    """
    manifest = read_manifest(directory)
    where = Path(directory) / MANIFEST
    if teacher_cfg is None:
        log.warning("model.teacher is null: the teacher of %s (%s) cannot be checked", where, manifest["teacher"])
        return
    expected: dict[str, Any] = {"arch": teacher_arch(teacher_cfg["net"])}
    checkpoint = teacher_cfg.get("checkpoint")
    cached_sha = manifest["teacher"].get("checkpoint_sha256")
    if checkpoint and Path(checkpoint).is_file():
        expected["checkpoint_sha256"] = file_sha256(checkpoint)
    elif checkpoint and cached_sha == RANDOM_INIT:
        expected["checkpoint_sha256"] = f"sha256 of {checkpoint} (absent here)"
    elif checkpoint:
        log.warning("model.teacher.checkpoint %s is absent here: the checkpoint of %s (sha256 %s) is not verified",
                    checkpoint, where, cached_sha)
    elif teacher_cfg.get("allow_random_init"):
        expected["checkpoint_sha256"] = RANDOM_INIT
    raise_on_mismatch(where, manifest, {"teacher": expected}, "the configured teacher (model.teacher)")
