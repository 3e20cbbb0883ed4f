"""The recipe report: one table of the settings that decide which model a run trains, printed at the start of every
``python train.py`` run beside the paper's / SAM 2's value, with a mark where they differ.

A month of GPU time can train the wrong model through a default nobody looked at (a random trunk, a stage 2 from
scratch, a global batch that changed with the GPU count). :func:`recipe_rows` reads each setting from the composed
config (nothing is typed twice: the memory plan's ``data.batch_size`` / ``trainer.accumulate_grad_batches`` are read,
not assumed) and compares it with :data:`REFERENCES`; :func:`report_recipe` prints the table (console and
``<task_name>.log``), writes ``<run dir>/recipe_report.md`` and logs it to TensorBoard (``add_text``) and W&B (a
``wandb.Table``). The references and their sources are those of docs/recipe.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from edgetam_train.models.checkpoint import file_sha256 as checkpoint_sha256
from edgetam_train.run.preflight import NO_INIT, RANDOM_TRUNK, is_choice, is_video_stage

log = logging.getLogger(__name__)

REPORT_FILE = "recipe_report.md"
DIFFERS = "≠"  # the mark of a setting that differs from its reference
EDGETAM = "EdgeTAM paper"
SAM2 = "SAM 2.1 training config (MOSE.yaml)"
OURS = "ours (unpublished)"
STAGE1_CHECKPOINT = "stage-1 checkpoint"


@dataclass(frozen=True)
class Reference:
    """One recipe-critical setting: its label, how it is read from the config, and the reference value per stage
    (``image`` = stage 1, ``video`` = stage 2) with where that value comes from."""

    setting: str
    read: Callable[[DictConfig, int], Any]
    image: Any
    video: Any
    source: str


@dataclass(frozen=True)
class Row:
    """A line of the report: the setting, this run's value, the reference, its source, whether they differ."""

    setting: str
    value: Any
    reference: Any
    source: str
    differs: bool


def _get(key: str) -> Callable[[DictConfig, int], Any]:
    return lambda cfg, _world: OmegaConf.select(cfg, key, default=None)


def _passes(cfg: DictConfig, _world: int) -> Any:
    clicks = OmegaConf.select(cfg, "model.prompts.num_correction_clicks", default=None)
    return None if clicks is None else 1 + int(clicks)


def _prompts(cfg: DictConfig, _world: int) -> str:
    p = OmegaConf.select(cfg, "model.prompts", default=None) or {}
    return f"point {p.get('point')} / box {p.get('box')} / mask {p.get('mask')}"


def _video_prompts(cfg: DictConfig, _world: int) -> str:
    p = OmegaConf.select(cfg, "model.prompts", default=None) or {}
    return f"clicks {p.get('video_prob_points', 0.5)} (box {p.get('video_prob_box', 0.5)}) / GT mask else"


def _task_weights(cfg: DictConfig, _world: int) -> str:
    t = OmegaConf.select(cfg, "model.loss.task_loss", default=None) or {}
    return "/".join(f"{t.get(k)}" for k in ("weight_focal", "weight_dice", "weight_iou", "weight_class"))


def _optimizer(cfg: DictConfig, _world: int) -> str:
    o = OmegaConf.select(cfg, "model.optimizer", default=None) or {}
    target = str(o.get("_target_", "")).rsplit(".", 1)[-1]
    name = "AdamW" if target == "build_optimizer" else target
    return f"{name} betas {list(o.get('betas') or [])}"


def _schedule(cfg: DictConfig, _world: int) -> str:
    s = OmegaConf.select(cfg, "model.scheduler", default=None)
    if not s:
        return "constant"
    parts = [str(s.get("name")), f"warmup {s.get('warmup_steps')}"]
    if s.get("name") == "inverse_sqrt":
        parts += [f"cooldown {s.get('cooldown_steps')}", f"timescale {s.get('timescale'):g}"]
    else:
        parts.append(f"min_ratio {s.get('min_ratio')}")
    return ", ".join(parts)


def _global_batch(cfg: DictConfig, world: int) -> str:
    batch = OmegaConf.select(cfg, "data.batch_size", default=1)
    accumulate = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1)
    return f"{int(batch) * int(accumulate) * world} = {batch} x {accumulate} x {world} devices"


def _trunk(cfg: DictConfig, _world: int) -> str:
    weights = OmegaConf.select(cfg, "model.student.image_encoder.trunk.weights", default=None)
    init_from = OmegaConf.select(cfg, "model.init_from", default=None)
    if init_from and not is_choice(init_from, NO_INIT):
        return "from init_from"
    if weights in (None, "") or is_choice(weights, RANDOM_TRUNK):
        return "random"
    return Path(str(weights)).name


def _teacher(cfg: DictConfig, _world: int) -> str:
    teacher = OmegaConf.select(cfg, "model.teacher", default=None)
    if not teacher:
        return "none (task loss only)"
    kind = str(teacher.get("_target_", "")).rsplit(".", 1)[-1]
    if kind == "CachedTeacher":
        return f"cached F16 ({Path(str(OmegaConf.select(cfg, 'data.teacher_cache'))).name})"
    checkpoint = teacher.get("checkpoint")
    if not checkpoint:
        return f"{kind}: random weights"
    return f"{Path(str(checkpoint)).name} sha256 {file_sha256(checkpoint)[:12]}"


def _init_from(cfg: DictConfig, _world: int) -> str:
    init_from = OmegaConf.select(cfg, "model.init_from", default=None)
    if init_from in (None, "") or is_choice(init_from, NO_INIT):
        return "none"
    return str(init_from)


def _sa1b_in_video(key: str) -> Callable[[DictConfig, int], Any]:
    return _get(f"data.datasets.sa1b.{key}")


# The reference values of both stages, with their sources (docs/recipe.md gives the file and line of each).
REFERENCES: tuple[Reference, ...] = (
    Reference("image size", _get("model.student.image_size"), 1024, 1024, f"{EDGETAM}; SAM 2 resolution 1024"),
    Reference("masks per image (stage 1)", _get("data.max_masks"), 64, None, EDGETAM),
    Reference("objects per clip", _get("data.max_objects"), None, 3, f"{SAM2} max_num_objects"),
    Reference("frames per clip", _get("data.clip_len"), None, 8, f"{EDGETAM}; {SAM2} num_frames"),
    Reference("SA-1B share of stage-2 steps", _sa1b_in_video("share"), None, 0.1, EDGETAM),
    Reference("SA-1B masks per image in stage 2", _sa1b_in_video("max_objects"), None, 3, OURS),
    Reference("decoder passes (1 + correction clicks)", _passes, 8, 8, f"{EDGETAM}; {SAM2} num_correction_pt 7"),
    Reference("first prompt", _prompts, "point 0.5 / box 0.5 / mask 0.0", "point 0.5 / box 0.5 / mask 0.0",
              f"{SAM2} prob_to_use_box_input 0.5"),
    Reference("clip prompts", _video_prompts, None, "clicks 0.5 (box 0.5) / GT mask else",
              f"{SAM2} prob_to_use_pt_input 0.5"),
    Reference("correction click from GT", _get("model.prompts.prob_click_from_gt"), 0.1, 0.1, SAM2),
    Reference("task loss focal/dice/IoU/class", _task_weights, "20.0/1.0/1.0/1.0", "20.0/1.0/1.0/1.0", SAM2),
    Reference("λ_F (MSE F16)", _get("model.loss.lambda_f16"), 1.0, 1.0, EDGETAM),
    Reference("λ_M (MSE F_M)", _get("model.loss.lambda_fm"), 0.0, 1.0, EDGETAM),
    Reference("optimiser", _optimizer, "AdamW betas [0.9, 0.999]", "AdamW betas [0.9, 0.999]", SAM2),
    Reference("lr", _get("model.optimizer.lr"), 4.0e-4, 3.0e-4, EDGETAM),
    Reference("vision lr (image_encoder.*)", _get("model.optimizer.vision_lr"), None, 6.0e-5, EDGETAM),
    Reference("weight decay", _get("model.optimizer.weight_decay"), 0.1, 0.1, f"{EDGETAM}; {SAM2}"),
    Reference("decay rule", _get("model.optimizer.weight_decay_rule"), "sam2", "sam2", SAM2),
    Reference("schedule", _schedule, "inverse_sqrt, warmup 1000, cooldown 5000, timescale 1000",
              "cosine, warmup 15000, min_ratio 0.1", f"{EDGETAM}; SAM 2 end_value lr/10"),
    Reference("steps", _get("trainer.max_steps"), 100000, 130000, OURS),
    Reference("global batch (batch x accumulate x devices)", _global_batch, 128, 256, EDGETAM),
    Reference("gradient clip (L2 norm)", _get("trainer.gradient_clip_val"), 0.1, 0.1, f"{EDGETAM}; {SAM2}"),
    Reference("precision", _get("trainer.precision"), "bf16-mixed", "bf16-mixed", f"{EDGETAM}; {SAM2}"),
    Reference("student trunk init", _trunk, "repvit_m1.dist_in1k.safetensors", "from init_from",
              "official EdgeTAM: timm repvit_m1.dist_in1k (ImageNet)"),
    Reference("teacher", _teacher, "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_base_plus.pt", EDGETAM),
    Reference("init_from", _init_from, "none", STAGE1_CHECKPOINT, EDGETAM),
)

_SHA_CACHE: dict[tuple[str, int, float], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of ``path`` ("missing" when it is not a file); cached per path, size and mtime."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = checkpoint_sha256(path)
    return _SHA_CACHE[key]


def resolve_world_size(trainer_cfg: DictConfig | None) -> int:
    """Devices x nodes of a trainer config: ``devices`` an int, a list (its length) or ``auto`` / -1 (every CUDA
    device for a GPU accelerator, else 1); ``num_nodes`` default 1."""
    trainer_cfg = trainer_cfg or OmegaConf.create({})
    devices = trainer_cfg.get("devices", 1)
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    elif devices in ("auto", -1, None):
        gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        count = int(devices)
    return max(1, count) * int(trainer_cfg.get("num_nodes", 1) or 1)


def _same(value: Any, reference: Any) -> bool:
    if reference == STAGE1_CHECKPOINT:  # any file is the stage-1 student as far as the config can tell
        return value != "none"
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and not isinstance(value, bool):
        return math.isclose(float(value), float(reference), rel_tol=1e-9)
    if isinstance(reference, int) and isinstance(value, str) and value.split(" ", 1)[0].isdigit():
        return int(value.split(" ", 1)[0]) == reference  # the global batch "128 = 4 x 4 x 8 devices"
    return str(value) == str(reference)


def recipe_rows(cfg: DictConfig, world_size: int | None = None) -> list[Row]:
    """The report's rows for a composed config. ``world_size``: devices x nodes (default: from ``cfg.trainer``,
    :func:`resolve_world_size`). Settings of the other stage (reference None) are left out."""
    world = world_size if world_size is not None else resolve_world_size(cfg.get("trainer"))
    stage = "video" if is_video_stage(cfg.get("data")) else "image"
    rows = []
    for ref in REFERENCES:
        reference = getattr(ref, stage)
        if reference is None:
            continue
        value = ref.read(cfg, world)
        rows.append(Row(ref.setting, value, reference, ref.source, not _same(value, reference)))
    return rows


def format_report(rows: Iterable[Row], title: str) -> str:
    """A markdown table: setting | this run | paper / SAM 2 | source, ``≠`` in front of a differing value."""
    lines = [f"### {title}", "", "| setting | this run | paper / SAM 2 | source |", "|---|---|---|---|"]
    for r in rows:
        mark = f"{DIFFERS} " if r.differs else ""
        lines.append(f"| {r.setting} | {mark}{r.value} | {r.reference} | {r.source} |")
    return "\n".join(lines)


def _log_to(loggers: Iterable[Any], text: str, rows: list[Row]) -> None:
    """The report as text in TensorBoard and as a table in W&B (CSV: the file in the run directory)."""
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if kind == "TensorBoardLogger":
                logger.experiment.add_text("recipe_report", text, 0)
            elif kind == "WandbLogger":
                import wandb

                table = wandb.Table(columns=["setting", "this run", "paper / SAM 2", "source", "differs"],
                                    data=[[r.setting, str(r.value), str(r.reference), r.source, r.differs]
                                          for r in rows])
                logger.experiment.log({"recipe_report": table})
        except Exception as err:  # noqa: BLE001 - a tracker hiccup must not stop the run; the file has the report
            log.warning("recipe report not logged to %s: %s", kind, err)


def report_recipe(cfg: DictConfig, loggers: Iterable[Any] = (), output_dir: str | Path | None = None,
                  world_size: int | None = None) -> list[Row]:
    """Print the recipe report, write ``<output_dir>/recipe_report.md`` and log it to ``loggers``; returns the rows.
    Differences are also logged as one warning line each, so they stand out in ``<task_name>.log``."""
    rows = recipe_rows(cfg, world_size)
    stage = "stage 2 (video)" if is_video_stage(cfg.get("data")) else "stage 1 (images)"
    differing = [r for r in rows if r.differs]
    text = format_report(rows, f"Recipe report: {cfg.get('run_name', 'run')} vs the paper's {stage} "
                               f"({len(differing)} of {len(rows)} settings differ, marked {DIFFERS})")
    log.info("\n%s", text)
    for r in differing:
        log.warning("recipe: %s = %s, the paper's %s is %s (%s)", r.setting, r.value, stage, r.reference, r.source)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / REPORT_FILE).write_text(text + "\n")
    _log_to(loggers, text, rows)
    return rows
