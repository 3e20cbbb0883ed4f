"""What ``python train.py`` does: compose -> instantiate data, model, callbacks, loggers, trainer -> fit.

Lightning does the plumbing (strategies, precision, checkpointing, logging); this file only wires the Hydra config
to it, resolves ``ckpt_path: auto`` to the run's last checkpoint, and turns config mistakes into clear errors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_DIR, register_resolvers

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
    """``auto`` -> ``<output_dir>/checkpoints/last.ckpt`` when it exists (resume), else None (fresh run)."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (use ckpt_path=auto to resume the run's last)")
    return str(ckpt_path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; returns the final logged metrics."""
    register_resolvers()
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, _convert_="partial")
    if not isinstance(model, pl.LightningModule):
        raise ValueError(f"model={cfg.model.get('_target_')} is not a LightningModule: the model group selects the "
                         f"training module (e.g. model=distill_image); architectures (edgetam, sam2.1_hiera_*) go "
                         f"under model.student / model.teacher.net")
    callbacks = _instantiate_list(cfg.get("callbacks"), "callback")
    loggers = _instantiate_list(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    output_dir = cfg.paths.output_dir
    if trainer.is_global_zero:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(output_dir) / "config_resolved.yaml", resolve=True)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


CONFIG_PATH = str(CONFIG_DIR)
