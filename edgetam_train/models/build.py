"""Build SAM 2-family models by name from ``configs/arch/<name>.yaml``.

Names: ``edgetam`` (student) and ``sam2.1_hiera_{t,s,b+,l}`` (teachers); aliases such as ``sam2.1_hiera_base_plus``
are accepted. Inside a Hydra run the model tree comes from the composed config instead (``hydra.utils.instantiate``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ..config import CONFIG_DIR, register_resolvers
from .checkpoint import load_checkpoint
from .sam2_model import SAM2Model

ARCH_DIR = CONFIG_DIR / "arch"
ALIASES = {
    "sam2.1_hiera_tiny": "sam2.1_hiera_t", "sam2.1_hiera_small": "sam2.1_hiera_s",
    "sam2.1_hiera_base_plus": "sam2.1_hiera_b+", "sam2.1_hiera_large": "sam2.1_hiera_l",
}


def available_models() -> list[str]:
    """Architecture names with a config under configs/arch/ (``_*.yaml`` are shared parts, not models)."""
    return [path.stem for path in sorted(ARCH_DIR.glob("*.yaml")) if not path.stem.startswith("_")]


def _load_with_defaults(path: Path) -> DictConfig:
    """A group config with its same-group ``defaults`` (e.g. T/S/L extend B+) merged under ``_self_``."""
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", [])
    merged = OmegaConf.create()
    self_done = False
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, cfg)
            self_done = True
        else:
            merged = OmegaConf.merge(merged, _load_with_defaults(path.parent / f"{entry}.yaml"))
    return merged if self_done else OmegaConf.merge(merged, cfg)


def model_config(name: str, image_size: int | None = None) -> DictConfig:
    """The resolved config tree of model ``name``; ``image_size`` overrides the input size (default 1024)."""
    key = ALIASES.get(name, name)
    if key not in available_models():
        raise ValueError(f"unknown model variant {name!r}; valid: {', '.join(available_models())} "
                         f"(aliases: {', '.join(ALIASES)})")
    register_resolvers()
    cfg = _load_with_defaults(ARCH_DIR / f"{key}.yaml")
    if image_size is not None:
        cfg.image_size = image_size  # SAM2Model checks it (multiple of 32; of 256 with EdgeTAM's perceiver)
    return cfg


def build_model(name: str | DictConfig, image_size: int | None = None, checkpoint: str | Path | None = None
                ) -> SAM2Model:
    """Instantiate a model by name (or from a config tree), optionally loading an official/training checkpoint."""
    cfg = model_config(name, image_size) if isinstance(name, str) else name
    try:
        model = hydra.utils.instantiate(cfg, _convert_="all")
    except InstantiationException as err:
        # a constructor's ValueError (bad image_size, channel mismatch, ...) stays a ValueError, not hydra's wrapper
        cause = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ValueError):
            label = name if isinstance(name, str) else cfg.get("_target_", "model")
            raise ValueError(f"cannot build {label}: {cause}") from err
        raise
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
