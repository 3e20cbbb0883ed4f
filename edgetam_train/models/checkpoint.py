"""Official checkpoint files: ``torch.save({"model": state_dict})``, loaded strictly with ``weights_only=True``.

:func:`load_checkpoint` also accepts a Lightning training checkpoint (``{"state_dict": {"student.<key>": ...}}``) and
a bare state_dict, so every tool takes "a training checkpoint or an official .pt". Both kinds of file may carry an
architecture record (``"edgetam_arch"``, :mod:`edgetam_train.models.arch_record`) beside the weights:
:func:`read_checkpoint` returns it, :func:`save_checkpoint` and :func:`add_arch_record` write the one a model carries
(``model.arch_record``, set by ``build_model`` and by ``train.py`` for the student).

A LoRA run's training checkpoint holds only what trained (adapters, ``model.lora.heads``) and a reference to the
file its frozen weights come from (``"lora_base"``: ``model.init_from``'s path, size and sha256;
:func:`base_reference`): :func:`read_checkpoint` loads that base (checked by sha256, :func:`read_base`), puts the
trained tensors over it and merges the adapters.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgetam_train.models.arch_record import ARCH_KEY, check_record, describe, tree_differences
from edgetam_train.models.lora import BASE_KEY, LORA_KEY, merge_record

MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes differ from the model's."""


class UnreadableCheckpointError(CheckpointMismatchError):
    """A file that does not load as a checkpoint at all (random bytes, text, truncated); ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path} {reason}: not a checkpoint")
        self.path, self.reason = str(path), reason


def load_failure(path: str | Path, err: BaseException | None = None) -> str:
    """Why ``path`` does not load with ``torch.load`` (``err``: the exception it raised), in words that name no torch
    internals and never suggest ``weights_only=False``: not a torch file, truncated, or the first line of ``err``."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    if magic != b"PK\x03\x04":  # every torch.save since PyTorch 1.6 (and every Lightning checkpoint) is a zip archive
        return "is not a PyTorch checkpoint (no zip archive header: empty, text or random bytes)"
    text = str(err or "")
    if "central directory" in text:
        return "is truncated (the zip index at its end is missing: an interrupted write or copy)"
    if "Weights only load failed" in text:
        return "holds Python objects other than tensors and plain containers, which are not loaded (unsafe)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"cannot be loaded ({type(err).__name__}: {first[:200]})"


def safe_load(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that does not load raises
    :class:`UnreadableCheckpointError` naming the file and why (:func:`load_failure`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - reported with the file name, never torch's weights_only=False advice
        raise UnreadableCheckpointError(path, load_failure(path, e)) from None


def read_state_dict(path: str | Path, prefix: str = "student.") -> dict[str, Tensor]:
    """The model state_dict stored in ``path`` (official ``{"model": sd}``, Lightning ckpt, or bare sd).

    From a Lightning checkpoint the keys under ``prefix`` are returned with the prefix removed.
    """
    return read_checkpoint(path, prefix)[0]


def read_checkpoint(path: str | Path, prefix: str = "student.") -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state_dict, architecture record or None)`` of ``path`` (see :func:`read_state_dict`); the record is
    checked (:func:`~edgetam_train.models.arch_record.check_record`); a LoRA checkpoint's adapters are merged
    (:func:`~edgetam_train.models.lora.merge_record`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict with key 'model' or 'state_dict', got {type(obj)}")
    record = check_record(obj[ARCH_KEY], str(path)) if ARCH_KEY in obj else None
    if BASE_KEY in obj:  # a LoRA run's checkpoint: the trained tensors over its (sha256-checked) base weights
        own = {k[len(prefix):]: v for k, v in obj.get("state_dict", {}).items() if k.startswith(prefix)}
        state_dict = {**read_base(obj[BASE_KEY], path), **own}
    else:
        state_dict = _state_dict_of(obj, path, prefix)
    if isinstance(obj.get(LORA_KEY), dict):  # a LoRA run's checkpoint: its adapters merged, the plain layout
        state_dict = merge_record(state_dict, obj[LORA_KEY], str(path))
    return state_dict, record


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 hex of a file's bytes (a 320 MB SAM 2.1-B+ checkpoint: about a second)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_reference(path: str | Path) -> dict[str, Any]:
    """What a LoRA checkpoint records of its base weights file (``model.init_from``): the absolute path, the size
    in bytes and the sha256."""
    path = Path(path).resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


BASE_ENV = "EDGETAM_LORA_BASE"  # the base weights of a LoRA checkpoint at another path (another machine)


def base_path(reference: Mapping[str, Any]) -> Path:
    """Where a LoRA checkpoint's base weights are read from: ``$EDGETAM_LORA_BASE`` when set (the same file copied
    elsewhere, e.g. to another machine; its sha256 is still checked), else the recorded absolute path."""
    override = os.environ.get(BASE_ENV, "").strip()
    return Path(override) if override else Path(reference["path"])


def base_problem(reference: Any, path: str | Path) -> str | None:
    """Why the base file that ``reference`` (:func:`base_reference`) names is not the one it was, or None."""
    if not isinstance(reference, dict) or not {"path", "sha256"} <= set(reference):
        return f"its {BASE_KEY!r} entry is {reference!r}, expected a dict with 'path' and 'sha256'"
    base, sha = base_path(reference), str(reference["sha256"])
    where = f"(model.init_from) {base}" if base == Path(reference["path"]) else f"{BASE_ENV}={base}"
    if not base.is_file():
        return (f"its base weights {where} are missing: put that file (sha256 {sha}) back at that path, or set "
                f"{BASE_ENV} to a copy of it")
    actual = file_sha256(base)
    if actual != sha:
        return (f"its base weights {where} changed since training (sha256 {actual}, expected "
                f"{sha}): the adapters fit the original weights only; put the original file back")
    return None


def read_base(reference: Any, path: str | Path) -> dict[str, Tensor]:
    """The base state_dict of the LoRA checkpoint ``path`` from its ``lora_base`` entry ``reference``; raises
    :class:`CheckpointMismatchError` naming ``path`` and the base when the base is missing or changed
    (:func:`base_problem`)."""
    problem = base_problem(reference, path)
    if problem:
        raise CheckpointMismatchError(f"{path}: a LoRA checkpoint (adapters and trained heads only), but {problem}")
    return read_checkpoint(base_path(reference))[0]


def _state_dict_of(obj: dict[str, Any], path: Path, prefix: str) -> dict[str, Tensor]:
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointMismatchError(f"{path}: Lightning checkpoint has no keys under {prefix!r} "
                                          f"(first keys: {list(sd)[:5]})")
        return sub
    if all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise CheckpointMismatchError(f"{path}: expected key 'model' (official format) or 'state_dict' (Lightning), "
                                  f"found keys {list(obj)[:10]}")


def _listed(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:MAX_LISTED]) + more


def check_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing/unexpected keys and shape mismatches (20 of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        msg = f"checkpoint {source} does not match {type(model).__name__} ({len(expected)} tensors expected)"
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                msg += _listed(title, items)
        raise CheckpointMismatchError(msg)


def trunk_difference(model: nn.Module, record: dict[str, Any] | None, source: str) -> str | None:
    """A sentence naming both trunks when ``model`` and a checkpoint both carry records whose trunks
    (``image_encoder.trunk``: class, timm name, levels) differ; None when they agree or either has no record.
    The input size is not compared (weights do not depend on it)."""
    own = getattr(model, "arch_record", None)
    if record is None or own is None:
        return None
    trunks = []
    for r in (record, own):
        trunk = {k: v for k, v in r["config"].get("image_encoder", {}).get("trunk", {}).items() if k != "out_indices"}
        trunk["out_indices"] = r.get("trunk_out_indices")  # the levels used (a config may say null = auto)
        trunks.append(trunk)
    if None in (trunks[0]["out_indices"], trunks[1]["out_indices"]):
        trunks[0].pop("out_indices"), trunks[1].pop("out_indices")
    diffs = tree_differences({"trunk": trunks[0]}, {"trunk": trunks[1]})
    if not diffs:
        return None
    return (f"checkpoint {source} holds {describe(record)}, the model has trunk {own.get('trunk')} ("
            + "; ".join(f"image_encoder.{k}: checkpoint {a!r}, model {b!r}" for k, a, b in diffs) + ")")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` strictly; errors name the file and every kind of mismatch, led by the two trunks
    when both the file and the model record theirs and they differ."""
    sd, record = read_checkpoint(path)
    trunks = trunk_difference(model, record, str(path))
    try:
        check_state_dict(model, sd, str(path))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{trunks}\n{err}" if trunks else str(err)) from None
    if trunks:  # same keys and shapes (e.g. repvit_m1 vs repvit_m0_9 differ only in depth) but another trunk
        raise CheckpointMismatchError(trunks)
    model.load_state_dict(sd, strict=True)
    return model


TMP_SUFFIX = ".tmp"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through ``<path>.tmp`` + fsync + ``os.replace`` (creates the parent directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _disk_full(e, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"disk full: could not write {path} ({free / 1e6:.0f} MB free on the "
                                        f"filesystem of {path.parent}); free space there or write elsewhere") from e
        raise
    _fsync_dir(path.parent)


def _disk_full(err: BaseException, directory: Path) -> bool:
    """Whether a failed write was a full disk (or quota): ENOSPC / EDQUOT, or torch's zip writer's "file write
    failed" (``inline_container.cc``, which drops the errno) on a filesystem with less than 64 MB left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and ("write failed" in str(err) or "inline_container" in str(err)):
        try:
            return shutil.disk_usage(directory).free < 64 * 2**20
        except OSError:
            return False
    return False


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def add_arch_record(checkpoint: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Put ``model.arch_record`` (if it has one) under ``"edgetam_arch"`` in ``checkpoint``; returns it."""
    record = getattr(model, "arch_record", None)
    if record is not None:
        checkpoint[ARCH_KEY] = record
    return checkpoint


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``{"model": state_dict}`` (official layout; plus ``"edgetam_arch"`` when the model carries a record)
    atomically (:func:`atomic_torch_save`). The official loaders read ``["model"]`` only."""
    path = Path(path)
    checkpoint = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_torch_save(add_arch_record(checkpoint, model), path)
    return path
