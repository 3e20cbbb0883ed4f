"""What ``python train.py`` does: compose -> instantiate data, model, callbacks, loggers, trainer -> fit.

Lightning does the plumbing (strategies, precision, checkpointing, logging); this file only wires the Hydra config
to it, checks the config before anything is built, resolves ``ckpt_path: auto`` to the run's last checkpoint (or the
newer SLURM requeue checkpoint), keeps one W&B run id per run directory, refuses credentials in the config, and
turns config mistakes into clear errors.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

# imported for its side effect: edgetam_train.config registers the OmegaConf resolvers (${floordiv:...},
# ${rank_zero_or:...}) on import, which resolving the composed config here needs
import edgetam_train.config  # noqa: F401
from edgetam_train.models.build import record_student_architecture
from edgetam_train.run.cluster import (
    assign_wandb_run_ids,
    check_no_secrets,
    newest_resume_checkpoint,
    training_checkpoint_problem,
)
from edgetam_train.run.console import tidy_console
from edgetam_train.run.exits import RefusedRun
from edgetam_train.run.log_config import assign_wandb_tags, experiment_tags, log_config
from edgetam_train.run.preflight import (
    FREE_CHECKPOINTS,
    check_initialisation,
    check_numeric_config,
    check_run_dir,
    checkpoint_bytes,
)
from edgetam_train.run.recipe_report import report_recipe
from edgetam_train.run.resume_check import check_resume_config

log = logging.getLogger(__name__)


def _instantiate_list(cfg: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` node of a config group (callbacks, loggers); skips empty entries."""
    items: list[Any] = []
    for name, node in (cfg or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("instantiating %s <%s>", what, node._target_)
            items.append(hydra.utils.instantiate(node))
    return items


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``auto`` -> the newest of ``<output_dir>/checkpoints/last.ckpt`` and the SLURM requeue checkpoints
    ``<output_dir>/hpc_ckpt_N.ckpt`` when one exists (resume), else None (fresh run)."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        newest = newest_resume_checkpoint(output_dir)
        return str(newest) if newest else None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (use ckpt_path=auto to resume the run's last)")
    problem = training_checkpoint_problem(ckpt_path)
    if problem:
        raise ValueError(f"ckpt_path={ckpt_path}: the file {problem}")
    return str(ckpt_path)


def _target_class(node: DictConfig | None, key: str) -> tuple[str | None, Any]:
    """(``<key>._target_``, the class it names) of a config node; (None, None) without a target. An import failure
    is a ValueError naming the config key."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None, None
    try:
        return target, hydra.utils.get_class(target)
    except Exception as e:  # noqa: BLE001 - reported with the config key
        raise ValueError(f"{key}._target_={target} cannot be imported: {e}") from e


def check_model_config(model_cfg: DictConfig | None) -> None:
    """Fail before anything is built when ``model._target_`` is not a LightningModule (the ``model`` group holds the
    training modules; architectures are the ``arch`` group, under ``model.student`` / ``model.teacher.net``)."""
    target, cls = _target_class(model_cfg, "model")
    if cls is None or not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ValueError(f"model._target_={target}, which is not a LightningModule: the model group selects the "
                         f"training module (model=distill_image, or model=distill_video); architectures (edgetam, "
                         f"sam2.1_hiera_t/s/b+/l) go under it: arch@model.student=edgetam, "
                         f"arch@model.teacher.net=sam2.1_hiera_t")


def accepted_arguments(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes; None when it takes any. A ``**kwargs`` that is handed on to the base
    class (``VOSFinetuneDataModule(train, val, **kwargs)`` -> ``VideoDataModule``) adds the base's arguments, up the
    MRO to the first ``__init__`` without ``**kwargs``; ``object`` (nothing named takes them) means any."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            return None
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def check_data_config(data_cfg: DictConfig | None, choices: list[str]) -> None:
    """Fail before anything is built when ``data`` holds keys its ``_target_`` does not take: a ``debug`` or
    ``experiment`` choice written for another data module (``debug=quickstart_video`` sets ``data.datasets``, which
    only the video data module takes) otherwise ends in an instantiate TypeError. ``choices``: the Hydra choices
    (``experiment_tags()``), named in the message."""
    target, cls = _target_class(data_cfg, "data")
    if cls is None:
        return
    params = accepted_arguments(cls)
    if params is None:
        return
    unknown = sorted(k for k in data_cfg if not str(k).startswith("_") and k not in params)
    if unknown:
        chosen = ", ".join(choices) or "none"
        raise ValueError(f"data: {target.rsplit('.', 1)[-1]} (data._target_) takes no {unknown}. The chosen configs "
                         f"({chosen}) do not go together: debug=quickstart_video goes with "
                         f"experiment=edgetam_distill_video, debug=quickstart with experiment=edgetam_distill (and "
                         f"their own data); a data=<choice> needs a debug / experiment written for it (fine-tuning: "
                         f"experiment=edgetam_finetune, docs/finetune.md); or remove the keys (~data.{unknown[0]})")


def check_teacher_choice(cfg: DictConfig) -> None:
    """Refuse a teacher cache without the cached teacher and the reverse, before anything is built: the SA-1B loader
    reads ``data.teacher_cache`` and ``model/teacher=cached`` consumes what it read."""
    cache = cfg.get("data", {}).get("teacher_cache")
    teacher = cfg.get("model", {}).get("teacher")
    cached = isinstance(teacher, DictConfig) and str(teacher.get("_target_", "")).endswith(".CachedTeacher")
    if cache and not cached:
        raise ValueError(f"data.teacher_cache={cache} is set but model.teacher is not the cached teacher: add "
                         f"model/teacher=cached (or drop data.teacher_cache to run the teacher live)")
    if cached and not cache:
        raise ValueError("model/teacher=cached reads the teacher's F16 from data.teacher_cache: set "
                         "data.teacher_cache=<dir written by edgetam-cache-teacher>")


def _data_choice() -> list[str]:
    """``["data=<choice>"]`` inside a Hydra run (named with the experiment and debug choices when they clash)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    choice = HydraConfig.get().runtime.choices.get("data")
    return [f"data={choice}"] if choice else []


def preflight(cfg: DictConfig) -> str | None:
    """Every check that needs no model or data: config values, credentials, the module / data / teacher choices,
    where the weights start, the checkpoint to resume and its config. Returns the checkpoint to resume from (None: a
    fresh run); a problem raises :class:`RefusedRun` (a ``ValueError``) naming the key or file, which ``train.py``
    prints as one line (exit 2)."""
    try:
        check_numeric_config(cfg)  # lr=abc, batch_size=-1, ...: named now, not after the models are built
        check_no_secrets(cfg)  # before anything writes the config (config_resolved.yaml, logger hyper-parameters)
        check_model_config(cfg.get("model"))
        check_data_config(cfg.get("data"), [*experiment_tags(), *_data_choice()])
        check_teacher_choice(cfg)
        check_initialisation(cfg)  # no silent random trunk / stage 2 from scratch / missing teacher file
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
        check_resume_config(cfg, cfg.paths.output_dir, ckpt)  # a changed config stops here unless safe or accepted
    except (ValueError, FileNotFoundError) as e:
        raise RefusedRun(str(e)) from e
    return ckpt


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; returns the final logged metrics."""
    tidy_console()  # each Lightning line once, no warnings the user cannot act on
    ckpt = preflight(cfg)
    output_dir = cfg.paths.output_dir
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, _convert_="partial")
    record_student_architecture(model, cfg)  # checkpoints say which model they hold (trunk, image size)
    run_dirs = {"paths.output_dir": output_dir, "paths.ckpt_dir": cfg.paths.get("ckpt_dir", output_dir)}
    check_run_dir(run_dirs, FREE_CHECKPOINTS * checkpoint_bytes(model))  # not at the first save, steps later
    # W&B: the run id stored in the run directory when resuming, else a new one (configs/logger/wandb.yaml)
    assign_wandb_run_ids(cfg.get("logger"), output_dir, str(cfg.get("run_name", "run")), resuming=ckpt is not None)
    assign_wandb_tags(cfg.get("logger"), experiment_tags())  # e.g. "edgetam_distill", "debug:quickstart"
    callbacks = _instantiate_list(cfg.get("callbacks"), "callback")
    loggers = _instantiate_list(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_config(trainer.loggers, cfg, model)  # the whole resolved config, not only the module's hyper-parameters
    if trainer.is_global_zero:  # the recipe-critical settings beside the paper's, differences marked
        report_recipe(cfg, trainer.loggers, output_dir, world_size=trainer.world_size)
    if trainer.is_global_zero:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(output_dir) / "config_resolved.yaml", resolve=True)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

