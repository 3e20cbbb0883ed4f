"""Official SAM 2.1 / EdgeTAM checkpoint state_dict <-> Hugging Face transformers state_dict, both directions by
the one key table of :mod:`edgetam_train.export.hf_keys` (so a round trip is the identity)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from edgetam_train.export.hf_keys import (
    RENAMES,
    RESHAPES,
    Target,
    check_model,
    check_target,
    compile_template,
    in_image_model,
)


def _convert(state_dict: Mapping[str, Tensor], model: str, to_hf: bool) -> dict[str, Tensor]:
    """Apply RESHAPES then RENAMES in one direction; every input key must be consumed exactly once."""
    src_side, dst_side = ("official", "hf") if to_hf else ("hf", "official")
    remaining = dict(state_dict)
    out: dict[str, Tensor] = {}
    for rule in (r for r in RESHAPES if r.applies(model)):
        sources, targets = getattr(rule, src_side), getattr(rule, dst_side)
        pattern = compile_template(sources[0])
        for key in [k for k in remaining if pattern.match(k)]:
            groups = {k: v for k, v in pattern.match(key).groupdict().items() if k != "_rest"}
            names = [s.format(**groups) for s in sources]
            missing = [n for n in names if n not in remaining]
            if missing:
                raise ValueError(f"{key!r} needs its companion keys {missing} (model {model!r})")
            converted = (rule.to_hf if to_hf else rule.to_official)([remaining.pop(n) for n in names])
            out.update(zip((t.format(**groups) for t in targets), converted))
    renames = [(compile_template(getattr(r, src_side)), getattr(r, dst_side)) for r in RENAMES if r.applies(model)]
    unknown = []
    for key, tensor in remaining.items():
        for pattern, template in renames:
            m = pattern.match(key)
            if m:
                groups = m.groupdict()
                rest = groups.pop("_rest", "")
                new_key = template.format(**groups) + rest
                if new_key in out:
                    raise ValueError(f"{key!r} maps to {new_key!r}, which another key already produced")
                out[new_key] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        layout = "official" if to_hf else "transformers"
        raise ValueError(f"unknown {layout} keys for model {model!r}: {sorted(unknown)}")
    return out


def official_to_hf(state_dict: Mapping[str, Tensor], model: str, target: Target = "video") -> dict[str, Tensor]:
    """Official checkpoint state_dict -> transformers state_dict.

    Args:
        state_dict: official keys (as in ``shared/reference/<model>_state_dict.tsv``) -> tensors.
        model: one of :data:`~edgetam_train.export.hf_keys.MODELS`.
        target: "video" (``EdgeTamVideoModel`` / ``Sam2VideoModel``: all tensors) or "image" (``EdgeTamModel`` /
            ``Sam2Model``: the memory / perceiver / object-pointer tensors are dropped).

    Returns:
        transformers keys -> tensors (renamed tensors are shared, merged/split ones are new).

    Raises:
        ValueError: a key that is not part of ``model``'s official layout (all of them are named), or a merged group
            (e.g. ``point_embeddings.{0..3}``) with a member missing.
    """
    check_model(model)
    check_target(target)
    out = _convert(state_dict, model, to_hf=True)
    if target == "image":
        out = {k: v for k, v in out.items() if in_image_model(k)}
    return out


def hf_to_official(state_dict: Mapping[str, Tensor], model: str, target: Target | None = None) -> dict[str, Tensor]:
    """transformers state_dict -> official checkpoint state_dict (inverse of :func:`official_to_hf`).

    Args:
        state_dict: transformers keys -> tensors (video layout, image layout, or the hub checkpoints that hold the
            video layout for both classes).
        model: one of :data:`~edgetam_train.export.hf_keys.MODELS`.
        target: None accepts either layout; "image" additionally requires that only image-path keys are present
            (the result then holds only the official image-path keys); "video" accepts any (the caller checks
            completeness, e.g. with a strict ``load_state_dict``).

    Returns:
        official keys -> tensors. ``point_embed`` is split into 4 new tensors, ``k_proj``/``v_proj`` concatenated
        back into ``to_kv``; the two transformers copies of the gaussian matrix must be equal.

    Raises:
        ValueError: unknown transformers keys (all named), mismatched gaussian-matrix copies, or video-only keys with
            ``target="image"``.
    """
    check_model(model)
    check_target(target, allow_none=True)
    if target == "image":
        extra = sorted(k for k in state_dict if not in_image_model(k))
        if extra:
            raise ValueError(f"keys not in the transformers image layout for model {model!r}: {extra}")
    return _convert(state_dict, model, to_hf=False)
