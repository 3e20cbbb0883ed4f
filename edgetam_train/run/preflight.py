"""Checks ``python train.py`` makes before it builds or computes anything expensive, so that a mistake surfaces in
seconds with the config key or the path in the message, not after the models are built or at the first checkpoint
save ``every_n_train_steps`` later.

- :func:`check_numeric_config`: the numeric config values (learning rate, steps, batch size, ...) have the right type
  and range (``model.optimizer.lr=abc`` names the key instead of failing inside the optimizer);
- :func:`check_run_dir`: the run and checkpoint directories can be created and written, and their filesystem has
  room for a few checkpoints (:data:`FREE_CHECKPOINTS`) of the model about to be trained.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger(__name__)

FREE_CHECKPOINTS = 3  # free space needed before the first step, in checkpoints
_ABSENT = object()


@dataclass(frozen=True)
class Number:
    """A numeric config value: ``kind`` int or float (an int is accepted as a float), bounds, None allowed or not,
    and extra values accepted as they are (e.g. ``-1`` for "no limit")."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False
    also: tuple = ()

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not acceptable (None: it is)."""
        if value is None:
            return None if self.nullable else "must be set"
        if value in self.also and not isinstance(value, bool):
            return None
        ok_type = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None

    def expected(self) -> str:
        parts = ["an integer" if self.kind is int else "a number"]
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        extra = [repr(v) for v in self.also] + (["null"] if self.nullable else [])
        return " ".join(parts) + (f" (or {', '.join(extra)})" if extra else "")


# config key -> rule; a key absent from the config is not checked (each data module has its own keys)
NUMERIC_KEYS: dict[str, Number] = {
    "seed": Number(int),
    "trainer.max_steps": Number(int, low=1, also=(-1,)),
    "trainer.max_epochs": Number(int, low=1, also=(-1,), nullable=True),
    "trainer.accumulate_grad_batches": Number(int, low=1),
    "trainer.gradient_clip_val": Number(float, low=0, nullable=True),
    "trainer.log_every_n_steps": Number(int, low=1),
    "trainer.val_check_interval": Number(float, low=0, low_open=True, nullable=True),
    "model.optimizer.lr": Number(float, low=0, low_open=True),
    "model.optimizer.vision_lr": Number(float, low=0, low_open=True, nullable=True),
    "model.optimizer.weight_decay": Number(float, low=0),
    "model.scheduler.warmup_steps": Number(int, low=0),
    "model.scheduler.cooldown_steps": Number(int, low=0),
    "model.max_consecutive_nonfinite": Number(int, low=1, nullable=True),
    "data.batch_size": Number(int, low=1),
    "data.num_workers": Number(int, low=0),
    "data.image_size": Number(int, low=1),
    "data.max_masks": Number(int, low=1),
    "data.max_objects": Number(int, low=1),
    "data.clip_len": Number(int, low=1),
    "data.hflip_p": Number(float, low=0, high=1),
    "data.reverse_p": Number(float, low=0, high=1),
    "data.max_skip_rate": Number(float, low=0, high=1),
    "data.val_fraction": Number(float, low=0, high=1),
    "data.max_image_pixels": Number(int, low=1),
    "data.min_image_side": Number(int, low=1),
    "callbacks.model_checkpoint.every_n_train_steps": Number(int, low=0, nullable=True),
    "callbacks.mask_pictures.every_n_steps": Number(int, low=1),
}


def check_numeric_config(cfg: DictConfig, rules: dict[str, Number] | None = None) -> None:
    """Raise ``ValueError`` naming every numeric config key (of ``rules``, default :data:`NUMERIC_KEYS`) whose value
    has the wrong type or range, e.g. ``model.optimizer.lr='abc' (str): expected a number > 0``."""
    problems = []
    for key, rule in (rules or NUMERIC_KEYS).items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except Exception as e:  # noqa: BLE001 - an interpolation that cannot resolve (e.g. floordiv of 'abc')
            problems.append(f"{key}: cannot be resolved ({type(e).__name__}: {str(e).splitlines()[0]})")
            continue
        if value is _ABSENT:
            continue
        problem = rule.problem(value)
        if problem:
            problems.append(f"{key}={value!r} ({type(value).__name__}): {problem}; expected {rule.expected()}")
    if problems:
        raise ValueError("config values out of type or range:\n  " + "\n  ".join(problems))


def checkpoint_bytes(model: nn.Module) -> int:
    """Rough size of one training checkpoint of ``model``: its state_dict plus AdamW's two moments per trainable
    parameter (Lightning saves both)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return state + moments


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_run_dir(directories: dict[str, str | Path], need_bytes: int = 0) -> None:
    """Create each directory, write and remove a file in it, and check its filesystem has ``need_bytes`` free.

    Args:
        directories: {config key: path}, e.g. ``{"paths.output_dir": ..., "paths.ckpt_dir": ...}``; the key is
            named in the error.
        need_bytes: free space required (e.g. :data:`FREE_CHECKPOINTS` x :func:`checkpoint_bytes`).

    Raises ``PermissionError`` / ``OSError`` naming the key, the path and what to do.
    """
    for key, directory in directories.items():
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=path)
            try:
                os.write(fd, b"0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise type(e)(e.errno, f"{key}={path} is not writable ({e.strerror or e}): checkpoints and logs go "
                                   f"there; fix its permissions or point {key} elsewhere") from None
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise OSError(28, f"disk full: {key}={path} has {_gb(free)} free, and {FREE_CHECKPOINTS} checkpoints need "
                              f"about {_gb(need_bytes)}; free space there or point {key} elsewhere")
    log.info("run directories writable, %s free needed: %s", _gb(need_bytes),
             ", ".join(f"{k}={v}" for k, v in directories.items()))
