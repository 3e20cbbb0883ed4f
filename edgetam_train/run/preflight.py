"""Checks ``python train.py`` makes before it builds or computes anything expensive, so that a mistake surfaces in
seconds with the config key or the path in the message, not after the models are built or at the first checkpoint
save ``every_n_train_steps`` later.

- :func:`check_numeric_config`: the numeric config values (learning rate, steps, batch size, ...) have the right type
  and range (``model.optimizer.lr=abc`` names the key instead of failing inside the optimizer);
- :func:`check_run_dir`: the run and checkpoint directories can be created and written, and their filesystem has
  room for a few checkpoints (:data:`FREE_CHECKPOINTS`) of the model about to be trained;
- :func:`check_initialisation`: the weights start where the paper's do (ImageNet trunk, stage 2 from stage 1, an
  existing teacher file) unless the config says ``random`` / ``none`` on purpose.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from edgetam_train.data.datamodule import VideoDataModule

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
        if not math.isfinite(value):  # nan passes every comparison below; an optimizer then trains on nan
            return "must be a finite number"
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
    if len(problems) == 1:
        raise ValueError(f"config value out of type or range: {problems[0]}")
    if problems:
        raise ValueError("config values out of type or range:\n  " + "\n  ".join(problems))


def checkpoint_bytes(model: nn.Module) -> int:
    """Rough size of one training checkpoint of ``model``: its state_dict plus AdamW's two moments per trainable
    parameter (Lightning saves both). A LoRA run with a ``model.init_from`` (``model.lora_base``) saves only its
    trainable tensors (:mod:`edgetam_train.distill.lora`)."""
    if getattr(model, "lora_base", None) is not None:
        state = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    else:
        state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return state + moments


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def probe_writable(key: str, directory: str | Path) -> str | None:
    """Create ``directory`` (and its parents), write, fsync and remove a 4 KB file in it; returns why that failed
    ("<key>=<dir> is not writable (<reason>) ...", naming ``key``) or None."""
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
        return (f"{key}={path} is not writable ({e.strerror or e}): checkpoints and logs go there; fix its "
                f"permissions or point {key.split(' ')[0]} elsewhere")
    return None


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
        problem = probe_writable(key, path)
        if problem:
            raise PermissionError(13, problem)
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise OSError(28, f"disk full: {key}={path} has {_gb(free)} free, and {FREE_CHECKPOINTS} checkpoints need "
                              f"about {_gb(need_bytes)}; free space there or point {key} elsewhere")
    log.info("run directories writable, %s free needed: %s", _gb(need_bytes),
             ", ".join(f"{k}={v}" for k, v in directories.items()))


# ------------------------------------------------------------------------------------ where the weights start from

RANDOM_TRUNK = "random"  # model.student.image_encoder.trunk.weights=random: a random trunk, chosen on purpose
NO_INIT = "none"  # model.init_from=none: no starting checkpoint, chosen on purpose (stage 2 from the trunk's init)
TRUNK_KEY = "model.student.image_encoder.trunk.weights"
# timm trunk name -> the scripts/download.py weights name of its ImageNet checkpoint (what the official EdgeTAM
# builds its trunk from with timm pretrained=True: repvit_m1.dist_in1k)
TRUNK_DOWNLOADS: dict[str, tuple[str, str]] = {"repvit_m1": ("repvit_m1", "repvit_m1.dist_in1k.safetensors")}
TEACHER_DOWNLOADS: dict[str, str] = {  # teacher checkpoint file name -> its scripts/download.py weights name
    f"sam2.1_hiera_{size}.pt": f"sam2.1_hiera_{size}" for size in ("tiny", "small", "base_plus", "large")}


def is_choice(value: object, word: str) -> bool:
    """True when a config value is the explicit opt-out ``word`` (``random`` / ``none``, any case)."""
    return isinstance(value, str) and value.strip().lower() == word


def _trunk_problem(trunk: DictConfig, init_from: object) -> str | None:
    """Why the student trunk's initialisation is refused (None: it is not). A set file must exist; no file at all is
    refused unless ``init_from`` replaces every student weight or the trunk is ``random`` on purpose."""
    weights = trunk.get("weights")
    if is_choice(weights, RANDOM_TRUNK):
        return None
    name = str(trunk.get("name", "repvit_m1"))
    download, file = TRUNK_DOWNLOADS.get(name, (None, f"<a timm checkpoint of {name}>"))
    fetch = (f"python scripts/download.py weights {download} --out weights (-> weights/{file}), then "
             f"{TRUNK_KEY}=weights/{file}" if download else f"{TRUNK_KEY}=<a local timm checkpoint of {name}>")
    opt_out = f"to train from a random trunk on purpose: {TRUNK_KEY}={RANDOM_TRUNK}"
    if weights not in (None, ""):
        if Path(str(weights)).is_file():
            return None
        return f"{TRUNK_KEY}={weights} does not exist. Download it: {fetch}; or {opt_out}"
    if init_from not in (None, "") and not is_choice(init_from, NO_INIT):
        return None  # model.init_from replaces every student weight, the trunk's included
    return (f"{TRUNK_KEY} is not set, so the student's {name} trunk would start from random weights (the paper's "
            f"starts from ImageNet: timm repvit_m1.dist_in1k, as the official EdgeTAM's timm pretrained=True). "
            f"Download it: {fetch}; or {opt_out}")


def _teacher_problem(teacher: object) -> str | None:
    """A live teacher whose checkpoint file is set but missing (refused now, not after the data is indexed)."""
    if not isinstance(teacher, DictConfig) or not teacher.get("checkpoint"):
        return None
    path = Path(str(teacher.checkpoint))
    if path.is_file():
        return None
    name = TEACHER_DOWNLOADS.get(path.name, "sam2.1_hiera_base_plus")
    return (f"model.teacher.checkpoint={path} does not exist. Download it: python scripts/download.py weights {name} "
            f"--out {path.parent}; or model.teacher.checkpoint=<official SAM 2.1 file>")


def is_video_stage(data_cfg: object) -> bool:
    """True when ``data`` is the stage-2 clip mixture (``VideoDataModule`` or a subclass)."""
    target = data_cfg.get("_target_") if isinstance(data_cfg, DictConfig) else None
    if not target:
        return False
    try:
        cls = hydra.utils.get_class(str(target))
    except Exception:  # noqa: BLE001 - check_data_config names an unimportable target
        return False
    return isinstance(cls, type) and issubclass(cls, VideoDataModule)


def check_initialisation(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a training run whose weights would start from nothing without saying so:

    - the student trunk (``model.student.image_encoder.trunk.weights``): a set file must exist; unset is refused
      unless ``model.init_from`` gives every student weight, or the value is ``random`` (on purpose);
    - stage 2 (``data`` is the clip mixture): ``model.init_from`` must name the stage-1 student (or be ``none``, on
      purpose); a set ``init_from`` file must exist;
    - a live teacher's ``model.teacher.checkpoint`` file must exist.

    Raises ``ValueError`` listing every problem, each naming the config key, the download command and the opt-out.
    Configs without a student trunk (other ``_target_`` modules) are not checked.
    """
    model = cfg.get("model")
    if not isinstance(model, DictConfig):
        return
    problems = []
    init_from = model.get("init_from")
    if init_from not in (None, "") and not is_choice(init_from, NO_INIT) and not Path(str(init_from)).is_file():
        folder = Path(str(init_from)).parent
        problems.append(f"model.init_from={init_from} does not exist (a stage-1 / official checkpoint). The official "
                        f"EdgeTAM weights: python scripts/download.py weights edgetam --out {folder} (-> edgetam.pt; "
                        f"docs/data_and_weights.md); or a run's checkpoints/last.ckpt")
    elif init_from in (None, "") and is_video_stage(cfg.get("data")):
        problems.append("model.init_from is not set, so stage 2 would start the student from scratch (the paper's "
                        "stage 2 starts from the stage-1 student): model.init_from=logs/train/runs/edgetam_distill/"
                        "checkpoints/last.ckpt (or any stage-1 / official checkpoint); to train stage 2 without it "
                        f"on purpose: model.init_from={NO_INIT}")
    trunk = OmegaConf.select(model, "student.image_encoder.trunk", default=None)
    if isinstance(trunk, DictConfig) and "weights" in trunk:
        problem = _trunk_problem(trunk, init_from)
        if problem:
            problems.append(problem)
    problem = _teacher_problem(model.get("teacher"))
    if problem:
        problems.append(problem)
    if problems:
        raise ValueError("refusing to start: the weights would not start where the recipe does:\n  - "
                         + "\n  - ".join(problems))
