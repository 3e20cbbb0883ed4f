"""The single-image path as export-only modules (image encoder, prompt decoder), the ONNX writer (opset 17) and the
image-path check; the on-device split (:mod:`~edgetam_train.export.ondevice`) extends both modules.

``image_encoder`` -- run once per image:

* input ``pixels`` float32 (1, 3, S, S): RGB resized to S x S (bilinear), /255, ImageNet mean / std.
* output ``image_embeddings`` (1, 256, S/16, S/16): F16 + the no-memory embedding (what the decoder reads).
* outputs ``high_res_feats_0`` (1, 32, S/4, S/4) and ``high_res_feats_1`` (1, 64, S/8, S/8): the stride-4 / 8
  features, already projected (``conv_s0`` / ``conv_s1``).

The encoder is exported fused: RepViT's BatchNorms / RepVGG branches folded by the trunk's ``reparameterize()``
(timm) and the decoder's ``conv_s0`` / ``conv_s1`` folded into the FPN's lateral convs
(:func:`~edgetam_train.models.fuse.fuse_high_res_projection`).

``prompt_decoder`` -- prompt encoder + mask decoder for B prompt sets on one image (B and the number of
points N are dynamic):

* inputs ``image_embeddings``, ``high_res_feats_0``, ``high_res_feats_1``: the encoder's outputs (batch 1, shared
  by the B prompt sets).
* input ``point_coords`` float32 (B, N, 2): pixel x, y in the S x S input (x * S / W, y * S / H).
* input ``point_labels`` float32 (B, N): 1 positive, 0 negative, 2 / 3 box top-left / bottom-right, -1 padding
  (pad prompt sets of unequal length with -1).
* input ``mask_input`` float32 (B, 1, S/4, S/4): previous low-res logits (any values when unused).
* input ``has_mask_input`` float32 (B,): 1 uses ``mask_input``, 0 the learned no-mask embedding.
* outputs ``masks`` (B, 3, S/4, S/4) multimask logits and ``iou_predictions`` (B, 3) their predicted IoUs.
* outputs ``single_mask`` (B, 1, S/4, S/4) and ``single_iou`` (B, 1): the single-mask output, with SAM 2's
  dynamic-stability fallback to the best multimask candidate when the single mask is unstable.
* output ``object_score_logits`` (B, 1): > 0 when the object is present.

Logits are thresholded at 0 after bilinear upsampling to the image size.
Both outputs come from one decoder pass, so there is no ``multimask_output`` input: use ``masks`` for one click
(ambiguous prompts) and ``single_mask`` for several clicks / a box, as the image predictor does. A box is two
points (labels 2, 3) placed before the clicks; the graph appends SAM's padding point itself.

:func:`check_image_graphs` checks both graphs (run by any runtime) against the *unfused* PyTorch model on
:func:`~edgetam_train.export.official.fixed_input` with 1, 3 and 5 points, with and without a mask input. The legacy
TorchScript exporter (``dynamo=False``) is used: it needs only ``onnx``, not ``onnxscript``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgetam_train.export.official import ExportReport, fixed_input, image_outputs, max_abs_diff
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.image import fuse_for_inference

OPSET = 17
ENCODER_OUTPUTS = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
DECODER_INPUTS = ("image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                  "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("masks", "iou_predictions", "single_mask", "single_iou", "object_score_logits")


def fuse_for_export(model: SAM2Model) -> SAM2Model:
    """A fused copy of ``model`` for inference export (the source model is left untouched): RepViT fused by the
    trunk's ``reparameterize()`` (Hiera has nothing to fuse), ``conv_s0`` / ``conv_s1`` folded into the neck
    (:func:`~edgetam_train.predictor.image.fuse_for_inference`); a Hiera trunk's position embedding becomes a
    constant of the export size (``HieraTrunk.fix_pos_embed``: no bicubic resize in the graphs)."""
    fused = fuse_for_inference(copy.deepcopy(model).eval())
    trunk = fused.image_encoder.trunk
    if hasattr(trunk, "fix_pos_embed"):
        trunk.fix_pos_embed(fused.image_size)
    return fused


class OnnxImageEncoder(nn.Module):
    """``pixels`` (1, 3, S, S) -> (image_embeddings (1, 256, S/16, S/16), high_res_feats_0 (1, 32, S/4, S/4),
    high_res_feats_1 (1, 64, S/8, S/8)); the image embeddings include the no-memory embedding."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        if not model.use_high_res_features_in_sam:
            raise ValueError("the ONNX export expects a model with high-res features in the decoder (all SAM 2.1 / "
                             "EdgeTAM configs)")
        self.model = model

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.model.encode_image(pixels)
        f16 = feats.f16
        if self.model.directly_add_no_mem_embed:
            f16 = f16 + self.model.no_mem_embed.view(1, -1, 1, 1)
        return f16, feats.high_res[0], feats.high_res[1]


class OnnxPromptDecoder(nn.Module):
    """Prompt encoder + mask decoder for B prompt sets on one image; see the module docstring for the tensors.

    ``forward(image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
    has_mask_input) -> (masks (B,3,h,w), iou_predictions (B,3), single_mask (B,1,h,w), single_iou (B,1),
    object_score_logits (B,1))`` with h = w = S/4.
    """

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def forward(self, image_embeddings: Tensor, high_res_feats_0: Tensor, high_res_feats_1: Tensor,
                point_coords: Tensor, point_labels: Tensor, mask_input: Tensor, has_mask_input: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        all_masks, all_ious, _, object_score = self.decode_all(
            image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
            has_mask_input)
        single_mask, single_iou = self.mask_decoder._dynamic_multimask_via_stability(all_masks, all_ious)
        return all_masks[:, 1:], all_ious[:, 1:], single_mask, single_iou, object_score

    def decode_all(self, image_embeddings: Tensor, high_res_feats_0: Tensor, high_res_feats_1: Tensor,
                   point_coords: Tensor, point_labels: Tensor, mask_input: Tensor, has_mask_input: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One decoder pass: all 4 masks (B,4,h,w), IoUs (B,4), mask tokens (B,4,256), object score (B,1)."""
        b = point_coords.shape[0]
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, pad=True)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask * self.prompt_encoder.mask_downscaling(mask_input) + (1.0 - has_mask) * no_mask
        images = image_embeddings.expand(b, -1, -1, -1)
        return self.mask_decoder.predict_masks(
            images, self.prompt_encoder.get_dense_pe(), sparse, dense, repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1])


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names, output_names,
            dynamic_axes: dict | None = None) -> None:
    with warnings.catch_warnings():  # shape checks traced as constants and opset notes: expected, not actionable
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        _onnx_export(module, args, path, input_names, output_names, dynamic_axes)


def _onnx_export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names, output_names,
                 dynamic_axes: dict | None) -> None:
    torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                      dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def decoder_example(image_size: int, num_points: int, batch: int = 1, with_mask: bool = False, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """Prompt inputs of the decoder graph for ``batch`` different prompt sets: set i has :func:`fixed_input`'s
    clicks of seed ``seed + i`` (labels as float) and a random mask input; ``has_mask_input`` = ``with_mask``."""
    side = image_size // 4
    rows = []
    for i in range(batch):
        _, points, labels = fixed_input(image_size, num_points=num_points, seed=seed + i)
        mask = 4 * torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(seed + i + 7))
        rows.append((points, labels.float(), mask))
    points, labels, masks = (torch.cat(parts) for parts in zip(*rows))
    return {"point_coords": points.numpy(), "point_labels": labels.numpy(), "mask_input": masks.numpy(),
            "has_mask_input": np.full((batch,), 1.0 if with_mask else 0.0, dtype=np.float32)}


def check_image_graphs(model: SAM2Model, encoder, decoder, report: ExportReport,
                       num_points: tuple[int, ...] = (1, 3, 5), batch: bool = True) -> ExportReport:
    """Compare the image path's graphs with the unfused PyTorch ``model``; adds the differences to ``report``.

    ``encoder(pixels=...)`` and ``decoder(**inputs)`` return ``{output name: array}`` (any
    :class:`~edgetam_train.runtime.backends.Graph`). Checks on :func:`fixed_input`: the three encoder
    outputs; for each count in ``num_points``, without and with a mask input, all five decoder outputs against
    :func:`image_outputs` (multimask and single-mask paths); with ``batch``, one 2-prompt-set batch.
    """
    model.eval()
    size = model.image_size
    pixels, _, _ = fixed_input(size)
    feats = encoder(pixels=pixels.numpy())
    feats = {name: feats[name] for name in ENCODER_OUTPUTS}
    ref = image_outputs(model, pixels, *fixed_input(size)[1:])
    for name, key in zip(ENCODER_OUTPUTS, ("f16", "high_res_0", "high_res_1")):
        report.diffs[f"encoder/{name}"] = max_abs_diff(torch.from_numpy(feats[name]), ref[key])
    pairs = (("masks", "multimask_logits"), ("iou_predictions", "multimask_iou"), ("single_mask", "single_logits"),
             ("single_iou", "single_iou"), ("object_score_logits", "object_score"))
    cases = [(n, m, 1) for n in num_points for m in (False, True)] + ([(num_points[-1], True, 2)] if batch else [])
    for n, with_mask, rows in cases:
        prompts = decoder_example(size, n, batch=rows, with_mask=with_mask)
        got = decoder(**feats, **prompts)
        tag = f"decoder/{n}pt" + ("+mask" if with_mask else "") + (f"x{rows}" if rows > 1 else "")
        for row in range(rows):
            mask = torch.from_numpy(prompts["mask_input"][row:row + 1]) if with_mask else None
            ref = image_outputs(model, pixels, torch.from_numpy(prompts["point_coords"][row:row + 1]),
                                torch.from_numpy(prompts["point_labels"][row:row + 1]).to(torch.int32), mask)
            for onnx_name, ref_name in pairs:
                diff = max_abs_diff(torch.from_numpy(got[onnx_name][row:row + 1]), ref[ref_name])
                key = f"{tag}/{onnx_name}"
                report.diffs[key] = max(report.diffs.get(key, 0.0), diff)
    return report
