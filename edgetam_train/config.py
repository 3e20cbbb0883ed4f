"""Config helpers: OmegaConf resolvers our YAML uses, and the location of the ``configs/`` tree."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register_resolvers() -> None:
    """Register ``${floordiv:a,b}`` (integer division, e.g. the S/16 feature grid) and ``${rank_zero_or:a,b}`` (``a``
    on global rank 0, else ``b``: only rank 0 writes Hydra's files, see ``configs/hydra/default.yaml``). Safe to call
    repeatedly."""
    from .cluster import rank_zero_or

    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("rank_zero_or"):
        OmegaConf.register_new_resolver("rank_zero_or", rank_zero_or)


register_resolvers()
