"""The whole run configuration in the experiment trackers, as lightning-hydra-template does.

Lightning logs only the LightningModule's own ``save_hyperparameters`` (prompts, optimizer, scheduler): the data,
batch sizes, trainer settings, loss weights, teacher and architecture would be missing from W&B's config panel and
from the CSV logger's ``hparams.yaml``. :func:`log_config` sends the resolved config (every group: ``model``,
``data``, ``trainer``, ``callbacks``, ``logger``, ``paths``, plus ``run_name``, ``seed``, ``ckpt_path`` ...) and the
parameter counts of the model to every logger before training starts.

:func:`experiment_tags` names the run's Hydra choices that describe it (``experiment``, ``debug``), and
:func:`assign_wandb_tags` adds them to the W&B logger's ``tags`` (``configs/logger/wandb.yaml``), so runs can be
filtered by experiment in the W&B UI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from edgetam_train.run.cluster import WANDB_LOGGER

# Hydra config groups whose chosen option becomes a W&B tag ("experiment" -> "edgetam_distill", "debug" -> "debug:...")
TAG_GROUPS: tuple[str, ...] = ("experiment", "debug")


def parameter_counts(model: torch.nn.Module | None) -> dict[str, int]:
    """``total`` / ``trainable`` / ``non_trainable`` parameters of ``model`` (registered modules only: the frozen
    teacher lives outside the module tree and is not counted)."""
    if model is None:
        return {}
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def config_hparams(cfg: DictConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The resolved config as a nested dict (without a ``hydra`` node) plus ``model_params`` (parameter counts)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    counts = parameter_counts(model)
    if counts:
        plain["model_params"] = counts
    return plain


def log_config(loggers: Iterable[Any], cfg: DictConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """``log_hyperparams(config_hparams(cfg, model))`` on every logger (Lightning's loggers do it on rank 0 only);
    returns what was logged."""
    hparams = config_hparams(cfg, model)
    for logger in loggers:
        logger.log_hyperparams(hparams)
    return hparams


def experiment_tags(choices: dict[str, Any] | None = None) -> list[str]:
    """Tags from the Hydra choices of ``TAG_GROUPS``: the experiment's name as is, others as ``<group>:<name>``.

    Args:
        choices: group -> chosen option (default: ``HydraConfig.get().runtime.choices``; [] outside a Hydra run).
    """
    if choices is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        choices = dict(HydraConfig.get().runtime.choices)
    tags = []
    for group in TAG_GROUPS:
        name = choices.get(group)
        if name not in (None, "", "null"):
            tags.append(str(name) if group == "experiment" else f"{group}:{name}")
    return tags


def assign_wandb_tags(logger_cfg: DictConfig | None, tags: Sequence[str]) -> list[str]:
    """Add ``tags`` to the ``tags`` of every WandbLogger node (after the user's own, without duplicates; W&B limits
    a tag to 64 characters); returns the tags of the last node."""
    merged: list[str] = []
    nodes = [n for n in (logger_cfg or {}).values() if isinstance(n, DictConfig) and n.get("_target_") == WANDB_LOGGER]
    for node in nodes:
        merged = list(dict.fromkeys([*(node.get("tags") or []), *(t[:64] for t in tags)]))
        node.tags = merged
    return merged
