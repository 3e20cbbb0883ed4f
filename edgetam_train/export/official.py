"""Export to the official checkpoint format (``{"model": state_dict}``, official SAM 2 / EdgeTAM key names), and the
fixed-input check every exporter uses.

The official format is our own layout, so exporting is: read a training checkpoint (or an official ``.pt``), load it
strictly into the named model, save ``{"model": state_dict}``, reload the file into a fresh model and compare the
tensors and the outputs on a fixed image + click. The file loads in the official code with
``build_sam2(config, ckpt_path)`` / ``build_sam2_video_predictor`` (their loader reads ``torch.load(...)["model"]``
strictly).

Shared helpers: :func:`fixed_input` (the deterministic check input), :func:`image_outputs` (what is compared:
prompt encoder + mask decoder outputs on the no-memory F16, as the image predictor computes them),
:func:`max_abs_diff`, :class:`ExportReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from edgetam_train.models.build import guess_model, load_model_file  # noqa: F401 - guess_model: re-exported
from edgetam_train.models.checkpoint import save_checkpoint
from edgetam_train.models.sam2_model import SAM2Model

TORCH_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-3


class ExportCheckError(RuntimeError):
    """A written export could not be reloaded as expected (missing keys, wrong config, ...)."""


@dataclass
class ExportReport:
    """What an exporter wrote and how closely the reloaded export reproduced the source model.

    Attributes:
        path: the file or directory written.
        diffs: check name -> max absolute difference (reloaded export vs source model).
        tolerance: the largest allowed difference.
        tolerances: check name -> its own allowed difference, overriding ``tolerance`` (documented where set).
        arch: the exported model's architecture record (:mod:`edgetam_train.models.arch_record`), when known.
    """

    path: Path
    diffs: dict[str, float] = field(default_factory=dict)
    tolerance: float = TORCH_TOLERANCE
    tolerances: dict[str, float] = field(default_factory=dict)
    arch: dict | None = None

    def allowed(self, name: str) -> float:
        """The tolerance of check ``name``."""
        return self.tolerances.get(name, self.tolerance)

    @property
    def max_diff(self) -> float:
        """The largest difference over all checks (0 when there are none)."""
        return max(self.diffs.values(), default=0.0)

    @property
    def failed(self) -> list[str]:
        """Checks whose difference exceeds their tolerance."""
        return [name for name, value in self.diffs.items() if not value <= self.allowed(name)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line per check (its tolerance when it has its own), then ``max abs diff = ...: OK|FAILED``."""
        lines = []
        for name, value in self.diffs.items():
            own = f" (tolerance {self.tolerances[name]:g})" if name in self.tolerances else ""
            flag = "" if value <= self.allowed(name) else "  <-- above tolerance"
            lines.append(f"  {name}: {value:.3g}{own}{flag}")
        verdict = "OK" if self.ok else f"FAILED ({', '.join(self.failed)})"
        lines.append(f"max abs diff = {self.max_diff:.3g} (tolerance {self.tolerance:g}): {verdict}")
        return "\n".join(lines)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| as a float (shapes must be equal; inf when they differ, or when a value is not finite)."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    if a.shape != b.shape:
        return float("inf")
    diff = (a - b).abs()
    if diff.numel() == 0:
        return 0.0
    return float(diff.max()) if torch.isfinite(diff).all() else float("inf")


def fixed_input(image_size: int, num_points: int = 2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The deterministic check input: normalised pixels (1, 3, S, S) ~ N(0, 1), ``num_points`` clicks (1, P, 2)
    pixel xy in the S x S input, labels (1, P) int32 (first positive, then alternating negative / positive)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, image_size, image_size, generator=gen)
    points = (0.15 + 0.7 * torch.rand(1, num_points, 2, generator=gen)) * image_size
    labels = torch.tensor([[1 if i % 2 == 0 else 0 for i in range(num_points)]], dtype=torch.int32)
    return pixels, points, labels


@torch.no_grad()
def image_outputs(model: SAM2Model, pixels: Tensor, points: Tensor, labels: Tensor,
                  mask_input: Tensor | None = None) -> dict[str, Tensor]:
    """Single-image outputs of ``model`` (eval) on normalised ``pixels`` (1, 3, S, S) and clicks in input pixels.

    As :class:`~edgetam_train.predictor.image.ImagePredictor`: F16 + no-memory embedding, prompt encoder + mask
    decoder. Returns ``multimask_logits`` (1, 3, S/4, S/4), ``multimask_iou`` (1, 3), ``single_logits``
    (1, 1, S/4, S/4), ``single_iou`` (1, 1) (dynamic-stability fallback applied), ``object_score`` (1, 1),
    ``f16`` (1, 256, S/16, S/16) (with the no-memory embedding), ``high_res_0`` / ``high_res_1`` (projected
    stride-4 / 8 maps).
    """
    model.eval()
    feats = model.encode_image(pixels)
    f16 = feats.f16
    if model.directly_add_no_mem_embed:
        f16 = f16 + model.no_mem_embed.view(1, -1, 1, 1)
    prompts = (points.float(), labels.to(torch.int32))
    multi, multi_iou, _, obj = model.heads(f16, feats.high_res, prompts, mask_input, multimask_output=True)
    single, single_iou, _, _ = model.heads(f16, feats.high_res, prompts, mask_input, multimask_output=False)
    out = {"multimask_logits": multi, "multimask_iou": multi_iou, "single_logits": single, "single_iou": single_iou,
           "object_score": obj, "f16": f16}
    if feats.high_res is not None:
        out["high_res_0"], out["high_res_1"] = feats.high_res
    return out


def load_model(checkpoint: str | Path, model: str | None = None, image_size: int | None = None) -> SAM2Model:
    """The model ``checkpoint`` holds, loaded strictly (eval): its recorded architecture and size, or ``model`` /
    ``image_size`` for files without a record (:func:`~edgetam_train.models.build.load_model_file`).

    ``checkpoint``: a Lightning training checkpoint (keys under ``student.``), an official ``{"model": sd}`` file or
    a bare state_dict. Raises :class:`~edgetam_train.models.checkpoint.CheckpointMismatchError` listing the
    missing / unexpected keys and shape mismatches, ``ArchitectureMismatchError`` when a flag contradicts the record.
    """
    return load_model_file(checkpoint, model, image_size)


def _compare_outputs(ours: dict[str, Tensor], theirs: dict[str, Tensor], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": max_abs_diff(ours[k], theirs[k]) for k in ours if k in theirs}


def export_official(model: SAM2Model, out: str | Path, model_name: str | None = None) -> ExportReport:
    """Write ``{"model": state_dict, "edgetam_arch": record}`` to ``out`` and check it: reload strictly into the
    model the file describes, compare every tensor and the :func:`image_outputs` on :func:`fixed_input`
    (tolerance 1e-4). The official loaders read ``["model"]`` only; the record is for our tools.

    Args:
        model: the source model (unfused; its state_dict has the official keys); its ``arch_record`` is written.
        out: the ``.pt`` file to write (parent directories are created).
        model_name: the ``configs/arch`` name for the reload when ``model`` carries no record (default edgetam).
    """
    path = save_checkpoint(model, out)
    has_record = getattr(model, "arch_record", None) is not None
    reloaded = load_model(path, None if has_record else (model_name or "edgetam"),
                          image_size=None if has_record else model.image_size)
    report = ExportReport(path, tolerance=TORCH_TOLERANCE)
    src, back = model.state_dict(), reloaded.state_dict()
    report.diffs["state_dict"] = max((max_abs_diff(src[k], back[k]) for k in src), default=0.0)
    pixels, points, labels = fixed_input(model.image_size)
    report.diffs.update(_compare_outputs(image_outputs(model, pixels, points, labels),
                                         image_outputs(reloaded, pixels, points, labels)))
    return report
