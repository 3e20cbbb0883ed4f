"""Config helpers: OmegaConf resolvers our YAML uses, and the location of the ``configs/`` tree."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register_resolvers() -> None:
    """Register ``${floordiv:a,b}`` (integer division, e.g. the S/16 feature grid). Safe to call repeatedly."""
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))


register_resolvers()
