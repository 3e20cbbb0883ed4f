"""Official checkpoint files: ``torch.save({"model": state_dict})``, loaded strictly with ``weights_only=True``.

:func:`load_checkpoint` also accepts a Lightning training checkpoint (``{"state_dict": {"student.<key>": ...}}``) and
a bare state_dict, so every tool takes "a training checkpoint or an official .pt".
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict with key 'model' or 'state_dict', got {type(obj)}")
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


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` strictly; errors name the file and every kind of mismatch."""
    sd = read_state_dict(path)
    check_state_dict(model, sd, str(path))
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


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``{"model": state_dict}`` (official layout) atomically (:func:`atomic_torch_save`)."""
    path = Path(path)
    atomic_torch_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    return path
