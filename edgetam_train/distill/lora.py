"""LoRA fine-tuning in the training module (``model.lora``): set-up, and the checkpoint's adapter entry.

:func:`setup_lora` adds peft LoRA layers to the student (:mod:`edgetam_train.models.lora`) after ``init_from`` and
``model.freeze`` are applied, so only the adapters and ``model.lora.heads`` train; everything else, BatchNorm running
statistics included (:func:`keep_batchnorm_eval`), stays bit-identical to ``init_from``.

Checkpoints keep ``student.<official key>`` for the (unmerged) base weights and put the adapters in the checkpoint's
``lora`` entry (:func:`save_lora`); :func:`restore_lora` puts peft's key names back before Lightning loads the
state_dict on resume. Readers of a plain model (:func:`edgetam_train.models.checkpoint.read_checkpoint`) merge the
adapters, so exports have the official layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from edgetam_train.distill.freeze import normalise_prefixes, trainable_summary
from edgetam_train.models.lora import (
    LORA_KEY,
    LoraSpec,
    apply_lora,
    join_state_dict,
    lora_record,
    parse_spec,
    split_state_dict,
)

log = logging.getLogger(__name__)
PREFIX = "student."


def setup_lora(student: nn.Module, cfg: Mapping[str, Any] | None, freeze: Sequence[str] | None) -> LoraSpec | None:
    """Apply ``model.lora`` (``cfg``; None / rank 0: off) to ``student`` in place; returns the spec or None.

    Raises:
        ValueError: a target matching no linear, a target or head only under ``model.freeze``, or nothing left to
            train (each names the entries).
    """
    spec = parse_spec(cfg)
    if spec is None:
        return None
    frozen = normalise_prefixes(freeze)
    targets = apply_lora(student, spec, frozen)
    trainable, total = trainable_summary(student)
    if trainable == 0:
        raise ValueError(f"model.lora={spec.targets} with model.freeze={frozen} leaves nothing to train")
    adapters = sum(p.numel() for n, p in student.named_parameters() if ".lora_" in n)
    log.info("LoRA rank %d (alpha %g) on %d linears (%s); trainable: %d adapter + %d head parameters of %d",
             spec.rank, spec.alpha, len(targets), ", ".join(spec.targets), adapters, trainable - adapters, total)
    return spec


def keep_batchnorm_eval(student: nn.Module) -> None:
    """BatchNorm layers in eval mode: their running statistics are not adapters and must not change."""
    for m in student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def save_lora(checkpoint: dict[str, Any], spec: LoraSpec) -> None:
    """Split the checkpoint's ``student.*`` state_dict into official keys and the ``lora`` entry (in place)."""
    plain, adapters = split_state_dict(checkpoint["state_dict"])
    checkpoint["state_dict"] = plain
    checkpoint[LORA_KEY] = lora_record(spec, adapters, prefix=PREFIX)


def restore_lora(checkpoint: dict[str, Any]) -> None:
    """The inverse of :func:`save_lora` (in place), for Lightning's resume into the LoRA-wrapped student."""
    record = checkpoint.get(LORA_KEY)
    if not isinstance(record, dict):
        return
    adapters = {PREFIX + k: v for k, v in record.get("adapters", {}).items()}
    checkpoint["state_dict"] = join_state_dict(checkpoint["state_dict"], adapters)
