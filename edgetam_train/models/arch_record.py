"""Architecture records: checkpoints that say which model they hold.

Official exports (``{"model": state_dict, "edgetam_arch": record}``) and Lightning checkpoints (``record`` beside
``state_dict``) carry a record, a plain dict (loadable with ``torch.load(weights_only=True)``; the official SAM 2 /
EdgeTAM loaders read only ``["model"]``, so the extra key does not disturb them)::

    {"version": 1, "name": "edgetam_mobilenetv4" | None, "trunk": "mobilenetv4_conv_small", "image_size": 256,
     "config": {...},    # the resolved configs/arch tree the model was built from (_target_ nodes)
     "trunk_out_indices": [1, 2, 3, 4], "trunk_channels": [960, 96, 64, 32]}   # what the built trunk resolved

``name`` is the ``configs/arch`` choice when known (informative); ``config`` is what the model is rebuilt from.
The trunk's initialisation file (``image_encoder.trunk.weights``) is not part of the architecture and is recorded as
null. The tools rebuild with :func:`inference_tree` (the training module's training-only settings, e.g. no
dynamic multimask fallback, back at the predictors' values) and compare a ``--model`` flag with the record through
:func:`tree_differences` (regularisation settings ignored).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

ARCH_KEY = "edgetam_arch"
RECORD_VERSION = 1
TRUNK_WEIGHTS = "image_encoder.trunk.weights"
# settings configs/model/distill_*.yaml change for training that predictors and exports use at these values
INFERENCE_SETTINGS: dict[str, Any] = {"sam_mask_decoder.dynamic_multimask_via_stability": True}
# leaves that do not change the model an inference tool runs (regularisation, init), ignored by tree_differences
IGNORED_LEAVES = ("dropout", "dropout_p", "attention_dropout_p", "hidden_dropout_p", "drop_rate", "drop_path_rate",
                  "weights")


class ArchitectureMismatchError(ValueError):
    """A checkpoint's recorded architecture contradicts the requested one (``--model`` / ``--image-size``)."""


def _plain(tree: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(tree, DictConfig):
        return OmegaConf.to_container(tree, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(tree))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``dotted`` in the nested dict ``tree`` when its parent exists (variants without the node are left)."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node[leaf] = value


def make_record(tree: DictConfig | Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The record of a model built from ``tree`` (a configs/arch tree, resolved here); ``name``: its arch name."""
    config = _plain(tree)
    _set(config, TRUNK_WEIGHTS, None)
    trunk = config.get("image_encoder", {}).get("trunk", {})
    return {"version": RECORD_VERSION, "name": name, "trunk": trunk.get("name"),
            "image_size": int(config.get("image_size", 1024)), "config": config}


def check_record(record: Any, source: str) -> dict[str, Any]:
    """``record`` if it is a valid record, else :class:`ArchitectureMismatchError` naming ``source`` and the key."""
    if not isinstance(record, dict):
        raise ArchitectureMismatchError(f"{source}: {ARCH_KEY!r} must be a dict, got {type(record).__name__}")
    for key, kind in (("version", int), ("image_size", int), ("config", dict)):
        if not isinstance(record.get(key), kind):
            raise ArchitectureMismatchError(f"{source}: {ARCH_KEY}.{key} must be a {kind.__name__}, got "
                                            f"{record.get(key)!r}")
    if record["version"] > RECORD_VERSION:
        raise ArchitectureMismatchError(f"{source}: {ARCH_KEY} version {record['version']} is newer than this "
                                        f"edgetam-train understands ({RECORD_VERSION}); upgrade edgetam-train")
    return record


def describe(record: Mapping[str, Any]) -> str:
    """``edgetam_mobilenetv4 (trunk mobilenetv4_conv_small, 256 px)``."""
    return f"{record.get('name') or 'recorded architecture'} (trunk {record.get('trunk')}, {record['image_size']} px)"


def inference_tree(record: Mapping[str, Any]) -> DictConfig:
    """The recorded tree as the tools build it: :data:`INFERENCE_SETTINGS` applied, no trunk init file."""
    config = copy.deepcopy(record["config"])
    for dotted, value in INFERENCE_SETTINGS.items():
        _set(config, dotted, value)
    _set(config, TRUNK_WEIGHTS, None)
    return OmegaConf.create(config)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def tree_differences(recorded: DictConfig | Mapping[str, Any], other: DictConfig | Mapping[str, Any]
                     ) -> list[tuple[str, Any, Any]]:
    """``(dotted key, recorded value, other value)`` for every leaf that differs, :data:`INFERENCE_SETTINGS` applied
    to both and :data:`IGNORED_LEAVES` left out; sorted by key."""
    flat = []
    for tree in (recorded, other):
        plain = _plain(tree)
        for dotted, value in INFERENCE_SETTINGS.items():
            _set(plain, dotted, value)
        flat.append({k: v for k, v in _flatten(plain).items() if k.rsplit(".", 1)[-1] not in IGNORED_LEAVES})
    a, b = flat
    missing = object()
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]
