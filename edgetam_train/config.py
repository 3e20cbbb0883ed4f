"""Config helpers: OmegaConf resolvers our YAML uses, and the location of the ``configs/`` tree."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from edgetam_train.distributed import rank_zero_or

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1} (for field-by-field diffs)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def register_resolvers() -> None:
    """Register ``${floordiv:a,b}`` (integer division, e.g. the S/16 feature grid) and ``${rank_zero_or:a,b}`` (``a``
    on global rank 0, else ``b``: only rank 0 writes Hydra's files, see ``configs/hydra/default.yaml``). Safe to call
    repeatedly."""
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("rank_zero_or"):
        OmegaConf.register_new_resolver("rank_zero_or", rank_zero_or)


register_resolvers()
