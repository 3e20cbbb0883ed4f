"""Build SAM 2-family models by name from ``configs/arch/<name>.yaml``, or from what a checkpoint records.

Names: ``edgetam`` (student; ``edgetam_*`` with other timm trunks) and ``sam2.1_hiera_{t,s,b+,l}`` (teachers);
aliases such as ``sam2.1_hiera_base_plus`` are accepted. Inside a Hydra run the model tree comes from the composed
config instead (``hydra.utils.instantiate``; ``train.py`` then calls :func:`attach_record`). Every model built here
carries ``model.arch_record`` (:mod:`.arch_record`), which checkpoints written from it store.

:func:`load_model_file` is what the tools (``edgetam-predict``, ``-export``, ``-eval``) run: the file's record
decides the architecture and input size; ``--model`` / ``--image-size`` only for files without one.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from edgetam_train.config import CONFIG_DIR
from edgetam_train.models.arch_record import (
    ArchitectureMismatchError,
    describe,
    inference_tree,
    make_record,
    tree_differences,
)
from edgetam_train.models.checkpoint import (
    MAX_LISTED,
    CheckpointMismatchError,
    check_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from edgetam_train.models.sam2_model import SAM2Model

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
    cfg = _load_with_defaults(ARCH_DIR / f"{key}.yaml")
    if image_size is not None:
        cfg.image_size = image_size  # SAM2Model checks it (multiple of 32; of 256 with EdgeTAM's perceiver)
    return cfg


def attach_record(model: SAM2Model, tree: DictConfig, name: str | None = None) -> SAM2Model:
    """Set ``model.arch_record`` from the tree it was built from (see :mod:`.arch_record`), plus what the built
    trunk resolved (``trunk_out_indices``: the timm levels used, ``trunk_channels``: low-res first -- what the
    official code's ``TimmBackbone`` ``features`` and ``neck.backbone_channel_list`` need); returns ``model``."""
    record = make_record(tree, name)
    trunk = model.image_encoder.trunk
    if getattr(trunk, "out_indices", None) is not None:
        record["trunk_out_indices"] = [int(i) for i in trunk.out_indices]
    record["trunk_channels"] = [int(c) for c in trunk.channel_list]
    model.arch_record = record
    return model


def record_student_architecture(module: object, cfg: DictConfig) -> None:
    """``train.py``: attach the record of ``cfg.model.student`` (with its ``arch@model.student`` choice as name, when
    Hydra knows it) to ``module.student``, so Lightning checkpoints store it. No-op without a student."""
    student, tree = getattr(module, "student", None), cfg.get("model", {}).get("student")
    if student is None or tree is None:
        return
    name = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            name = HydraConfig.get().runtime.choices.get("arch@model.student")
    except (ImportError, ValueError):
        pass
    attach_record(student, tree, name)


def build_model(name: str | DictConfig, image_size: int | None = None, checkpoint: str | Path | None = None
                ) -> SAM2Model:
    """Instantiate a model by name (or from a config tree), optionally loading an official/training checkpoint.

    The model carries ``arch_record`` (the resolved tree and ``name``); a checkpoint whose record names another
    trunk is refused (:class:`~.arch_record.ArchitectureMismatchError`)."""
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
    attach_record(model, cfg, ALIASES.get(name, name) if isinstance(name, str) else None)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def guess_model(state_dict: dict[str, Tensor]) -> str | None:
    """The ``configs/arch`` name an official-layout state_dict without a record looks like (its trunk keys), or None.

    Timm trunk keys (``image_encoder.trunk.body.*``) -> ``edgetam`` (RepViT-M1; other timm trunks cannot be told
    apart reliably); Hiera by patch-embedding width and block count: 96 wide with 12 blocks -> ``sam2.1_hiera_t``,
    16 -> ``_s``; 112 -> ``_b+``; 144 -> ``_l``.
    """
    if any(k.startswith("image_encoder.trunk.body.") for k in state_dict):
        return "edgetam"
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    width = int(patch.shape[0])
    if width == 96:
        return {12: "sam2.1_hiera_t", 16: "sam2.1_hiera_s"}.get(len(blocks))
    return {112: "sam2.1_hiera_b+", 144: "sam2.1_hiera_l"}.get(width)


def architecture_difference(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> str | None:
    """One line naming both architectures when ``state_dict`` (e.g. ``model.init_from``) looks like another
    ``configs/arch`` model than ``model`` (:func:`guess_model` of each); None when they agree or either is unknown."""
    own, theirs = guess_model(model.state_dict()), guess_model(state_dict)
    if own is None or theirs is None or own == theirs:
        return None
    return (f"{source} holds a {theirs} model but the model being trained is {own} (arch@model.student="
            f"{own}): pass the {own} checkpoint, or arch@model.student={theirs} for this one")


def _check_flags(record: dict, source: str, model: str | None, image_size: int | None) -> None:
    """A ``--model`` / ``--image-size`` that contradicts the record is an :class:`ArchitectureMismatchError`."""
    if image_size is not None and image_size != record["image_size"]:
        raise ArchitectureMismatchError(
            f"{source} records {describe(record)}; --image-size {image_size} contradicts it (leave it out: the "
            f"file says the size)")
    if model is None:
        return
    diffs = tree_differences(record["config"], model_config(model, record["image_size"]))
    if diffs:
        lines = [f"{k}: file {a!r}, --model {model} {b!r}" for k, a, b in diffs]
        more = f" ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
        raise ArchitectureMismatchError(
            f"{source} records {describe(record)}; --model {model} differs in {len(lines)} settings (leave --model "
            f"out: the file says its architecture):\n  " + "\n  ".join(lines[:MAX_LISTED]) + more)


def load_model_file(path: str | Path, model: str | None = None, image_size: int | None = None) -> SAM2Model:
    """The model a checkpoint file holds, loaded strictly, in eval mode.

    Args:
        path: Lightning checkpoint, official ``.pt`` or bare state_dict.
        model: ``configs/arch`` name (``--model``). With a record in the file it must agree with it (it is only
            checked); without one it picks the architecture (default: :func:`guess_model`, else ``edgetam``).
        image_size: input side (``--image-size``): must equal the recorded size; without a record the default is
            the architecture's (1024).

    Raises:
        ArchitectureMismatchError: a flag contradicts the record (the message lists the differing settings).
        CheckpointMismatchError: the weights do not fit (missing / unexpected / mis-shaped keys, with a hint).
        FileNotFoundError, ValueError: missing file, unknown model name, bad image size.
    """
    state_dict, record = read_checkpoint(path)
    source = str(path)
    if record is not None:
        _check_flags(record, source, model, image_size)
        net = build_model(inference_tree(record))
        net.arch_record = record
        check_state_dict(net, state_dict, f"{source} (recorded {describe(record)})")
    else:
        name = model or guess_model(state_dict) or "edgetam"
        net = build_model(name, image_size=image_size)
        try:
            check_state_dict(net, state_dict, f"{source} (as --model {name}: the file records no architecture)")
        except CheckpointMismatchError as err:
            guess = guess_model(state_dict)
            hint = (f"the checkpoint looks like --model {guess}" if guess not in (None, ALIASES.get(name, name))
                    else "pass the --model it was trained as (e.g. edgetam_mobilenetv4 for another timm trunk)")
            raise CheckpointMismatchError(f"{err}\n  hint: {hint}") from None
    net.load_state_dict(state_dict, strict=True)
    return net.eval()
