"""LoRA adapters on the linears of a SAM 2-family model through ``peft`` (``model.lora``), and their merge.

Config (``model.lora``; ``null`` or ``rank: 0`` = off)::

    rank: 8              # r of every adapter
    alpha: null          # lora_alpha (null: 2 * rank, i.e. a scaling of 2)
    dropout: 0.0         # lora_dropout
    targets: [all]       # presets (PRESETS: trunk, memory_attention, decoder, all) or module-name regexes
    heads: []            # module prefixes trained fully too, e.g. sam_mask_decoder.iou_prediction_head

Only ``nn.Linear`` modules are targets (attention q/k/v/out projections and MLP linears; the perceiver's fused
``to_kv`` is read as a weight, not called, so no preset names it). ``peft.inject_adapter_in_model`` replaces each
target by a ``peft`` LoRA layer: the original weight moves to ``<module>.base_layer.weight`` and the adapter is
``<module>.lora_A.default.weight`` / ``lora_B``. Everything but the adapters and ``heads`` gets ``requires_grad=False``.

Checkpoints keep the official key tree: :func:`split_state_dict` turns a LoRA-wrapped state_dict into the plain
(unmerged) official state_dict plus the adapters ``{"<module>.lora_A": A, "<module>.lora_B": B}``, stored as the
checkpoint's ``lora`` entry (:func:`lora_record`); :func:`join_state_dict` is its inverse (resume). Everything that
reads a checkpoint as a plain model (export, eval, predict, ``init_from``) gets :func:`merge_record`'s merged weights
W + (alpha / r) B A, computed by peft's own LoRA layer (``merge``), so the exported files have the plain layout.
A run with a ``model.init_from`` keeps only the trained official tensors and refers to the rest (``BASE_KEY``,
:func:`edgetam_train.models.checkpoint.read_base`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

LORA_KEY = "lora"  # the checkpoint entry holding the adapters
BASE_KEY = "lora_base"  # a training checkpoint's reference to its frozen weights (models/checkpoint.py base_reference)
ADAPTER = "default"  # peft's adapter name

# module-name regexes (full match) of the attention and MLP linears of each part
PRESETS: dict[str, str] = {
    "trunk": r"image_encoder\.trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.layers\.\d+)",
    "memory_attention": r"memory_attention\.layers\.\d+\.((self_attn|cross_attn_image)\.(q|k|v|out)_proj|linear[12])",
    "decoder": r"sam_mask_decoder\.transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|"
               r"cross_attn_image_to_token)\.(q|k|v|out)_proj|layers\.\d+\.mlp\.layers\.\d+|"
               r"final_attn_token_to_image\.(q|k|v|out)_proj)",
}
PRESETS["all"] = "|".join(f"({PRESETS[k]})" for k in ("trunk", "memory_attention", "decoder"))


@dataclass
class LoraSpec:
    """``model.lora`` as read by :func:`parse_spec` (module docstring)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["all"])
    heads: list[str] = field(default_factory=list)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def parse_spec(cfg: Mapping[str, Any] | LoraSpec | None) -> LoraSpec | None:
    """``model.lora`` (a mapping, or None / rank 0 for off) -> :class:`LoraSpec`; unknown keys are an error."""
    if cfg is None or isinstance(cfg, LoraSpec):
        return cfg
    cfg = dict(cfg)
    unknown = sorted(set(cfg) - {"rank", "alpha", "dropout", "targets", "heads"})
    if unknown:
        raise ValueError(f"model.lora: unknown keys {unknown}; expected rank, alpha, dropout, targets, heads")
    rank = int(cfg.get("rank") or 0)
    if rank <= 0:
        return None
    targets = cfg.get("targets") or []
    targets = [targets] if isinstance(targets, str) else [str(t) for t in targets]
    if not targets:
        raise ValueError(f"model.lora.targets is empty: name presets ({', '.join(PRESETS)}) or module regexes")
    heads = cfg.get("heads") or []
    heads = [heads] if isinstance(heads, str) else [str(h).removeprefix("student.") for h in heads]
    alpha = float(cfg["alpha"]) if cfg.get("alpha") is not None else 2.0 * rank
    return LoraSpec(rank=rank, alpha=alpha, dropout=float(cfg.get("dropout") or 0.0), targets=targets, heads=heads)


def _under(name: str, prefixes: Iterable[str]) -> str | None:
    """The first prefix ``name`` lies under (or equals), or None."""
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def resolve_targets(model: nn.Module, spec: LoraSpec, frozen: Sequence[str] = ()) -> list[str]:
    """The names of the ``nn.Linear`` modules of ``model`` that ``spec.targets`` select, outside ``frozen``.

    Raises:
        ValueError: a target matches no linear (naming it and the parts that have linears), or only linears under a
            ``model.freeze`` prefix (naming both).
    """
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    out: list[str] = []
    for target in spec.targets:
        pattern = PRESETS.get(target, target)
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"model.lora.targets entry {target!r} is neither a preset ({', '.join(PRESETS)}) "
                             f"nor a valid regex: {err}") from None
        hits = [n for n in linears if regex.fullmatch(n)]
        if not hits:
            parts = sorted({".".join(n.split(".")[:2]) for n in linears})
            raise ValueError(f"model.lora.targets entry {target!r} matches no nn.Linear of the student "
                             f"({type(model).__name__}); presets: {', '.join(PRESETS)}; parts with linears: "
                             f"{', '.join(parts)}")
        free = [n for n in hits if _under(n, frozen) is None]
        if not free:
            raise ValueError(f"model.lora.targets entry {target!r} selects only modules under model.freeze "
                             f"({_under(hits[0], frozen)}): frozen modules get no adapters, so it would train "
                             f"nothing; drop it from one of the two lists")
        out += [n for n in free if n not in out]
    return out


def apply_lora(model: nn.Module, spec: LoraSpec, frozen: Sequence[str] = ()) -> list[str]:
    """Inject ``peft`` LoRA layers into ``model`` (in place) and leave only the adapters and ``spec.heads``
    trainable. ``frozen``: the ``model.freeze`` prefixes (no adapters there; a head under one is an error).

    Returns:
        the adapted module names.
    Raises:
        ValueError: a bad target (:func:`resolve_targets`) or head (matches nothing, or is frozen).
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = resolve_targets(model, spec, frozen)
    params = dict(model.named_parameters())
    for head in spec.heads:
        if not any(_under(n, [head]) for n in params):
            top = sorted({n.split(".")[0] for n in params})
            raise ValueError(f"model.lora.heads entry {head!r} matches no parameter of the student; "
                             f"top-level names: {', '.join(top)}")
        if _under(head, frozen):
            raise ValueError(f"model.lora.heads entry {head!r} lies under model.freeze entry {_under(head, frozen)}: "
                             f"a frozen head does not train; drop it from one of the two lists")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(_is_adapter(name) or _under(name, spec.heads) is not None)
    return targets


def _is_adapter(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def is_lora_model(model: nn.Module) -> bool:
    """Whether ``model`` holds peft LoRA layers."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def split_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A LoRA-wrapped state_dict -> (the official, unmerged state_dict, the adapters ``<module>.lora_A`` /
    ``<module>.lora_B``). Keys may carry a prefix (``student.``); it is kept on both sides."""
    plain, adapters = {}, {}
    for key, value in state_dict.items():
        if _is_adapter(key):
            module, _, rest = key.partition(".lora_")
            which = rest.split(".")[0]  # "A" or "B"
            adapters[f"{module}.lora_{which}"] = value
        else:
            plain[key.replace(".base_layer.", ".")] = value
    return plain, adapters


def join_state_dict(plain: Mapping[str, Tensor], adapters: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`split_state_dict`: peft's key names for the adapted modules."""
    modules = {k.rsplit(".lora_", 1)[0] for k in adapters}
    out = {}
    for key, value in plain.items():
        module, _, leaf = key.rpartition(".")
        out[f"{module}.base_layer.{leaf}" if module in modules else key] = value
    for key, value in adapters.items():
        module, _, which = key.rpartition(".")
        out[f"{module}.{which}.{ADAPTER}.weight"] = value
    return out


def lora_record(spec: LoraSpec, adapters: Mapping[str, Tensor], prefix: str = "") -> dict[str, Any]:
    """The checkpoint's ``lora`` entry: the settings and the adapters (``prefix`` removed from their keys)."""
    return {"rank": spec.rank, "alpha": spec.alpha, "dropout": spec.dropout, "targets": list(spec.targets),
            "heads": list(spec.heads), "adapters": {k.removeprefix(prefix): v for k, v in adapters.items()}}


def _lora_layer(base: Tensor, a: Tensor, b: Tensor, rank: int, alpha: float) -> nn.Module:
    """A peft LoRA ``Linear`` around a bias-free linear of weight ``base``, holding adapter ``a`` / ``b``."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    holder.linear = nn.Linear(base.shape[1], base.shape[0], bias=False, dtype=base.dtype)
    with torch.no_grad():
        holder.linear.weight.copy_(base)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["linear"]), holder, ADAPTER)
    layer = holder.linear
    with torch.no_grad():
        layer.lora_A[ADAPTER].weight.copy_(a)
        layer.lora_B[ADAPTER].weight.copy_(b)
    return layer


def merge_record(state_dict: Mapping[str, Tensor], record: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """The official state_dict with the ``lora`` entry ``record`` merged into its weights (peft's ``merge``).

    Raises:
        ValueError: an adapter whose module has no ``.weight`` in ``state_dict`` or whose shapes do not fit,
            naming ``source`` and the key.
    """
    out = dict(state_dict)
    adapters = record.get("adapters", {})
    rank, alpha = int(record["rank"]), float(record["alpha"])
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in adapters}):
        key, a, b = f"{module}.weight", adapters.get(f"{module}.lora_A"), adapters.get(f"{module}.lora_B")
        if key not in out or a is None or b is None:
            raise ValueError(f"{source}: LoRA adapter of {module} has no base weight {key} or lacks lora_A / lora_B")
        w = out[key]
        if tuple(a.shape) != (rank, w.shape[1]) or tuple(b.shape) != (w.shape[0], rank):
            raise ValueError(f"{source}: LoRA adapter of {module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)}"
                             f" do not fit weight {tuple(w.shape)} at rank {rank}")
        layer = _lora_layer(w, a.to(w.dtype), b.to(w.dtype), rank, alpha)
        layer.merge()
        out[key] = layer.get_base_layer().weight.detach().clone()
    return out


def merge_model(model: nn.Module) -> nn.Module:
    """Merge every peft LoRA layer of ``model`` into its base linear and put the plain linear back (in place; peft's
    ``merge`` then the base layer): the official module tree and key names."""
    from peft.tuners.lora import LoraLayer

    named = dict(model.named_modules())
    for name, module in list(named.items()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(named[parent] if parent else model, child, module.get_base_layer())
    return model
