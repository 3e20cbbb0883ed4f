"""Export to a Hugging Face transformers directory that both the image and the video class load.

One directory serves both classes, as the hub checkpoints do: it holds the *video* layout (every tensor of the
official checkpoint, renamed by :mod:`edgetam_train.export.hf_keys`) and the video config
(``EdgeTamVideoConfig`` / ``Sam2VideoConfig``, official hyper-parameters; for EdgeTAM a ``TimmWrapperConfig``
backbone naming the model's timm trunk -- RepViT-M1 or any other timm ``features_only`` trunk with channels-first
maps, which is what transformers' EdgeTAM vision model can express; :func:`hf_target` says so plainly otherwise).

* ``EdgeTamVideoModel.from_pretrained(dir)`` / ``Sam2VideoModel`` load it as is.
* ``EdgeTamModel.from_pretrained(dir)`` / ``Sam2Model`` build their image config from the same ``config.json``
  (``vision_config``, ``prompt_encoder_config``, ``mask_decoder_config``; transformers warns that the model type is
  ``edgetam_video``, which is expected) and skip the memory / perceiver / object-pointer tensors through their
  ``_keys_to_ignore_on_load_unexpected`` patterns, so nothing is reported missing or unexpected.

Written files: ``config.json``, ``model.safetensors`` and ``processor_config.json`` (a ``Sam2VideoProcessor``
whose image / video processors resize to S x S; ``Sam2Processor.from_pretrained(dir)`` and
``Sam2VideoProcessor.from_pretrained(dir)`` both read it).

Check after writing (tolerance 1e-4): both classes reload the directory with no missing / unexpected / mismatched
keys; the video model's weights mapped back to the official layout equal the source; the image model's masks, IoUs
and object score on :func:`~edgetam_train.export.official.fixed_input` (multimask and single-mask) equal ours; the
video model, run through its inference-session API on two frames (a click on frame 0, then tracking frame 1 from
memory), equals our :meth:`~edgetam_train.models.sam2_model.SAM2Model.track_step` on both frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from edgetam_train.config import flatten_dict
from edgetam_train.export.hf_config import REPVIT_M1, TimmTrunkSpec, build_hf_model, hf_config, hf_model_class
from edgetam_train.export.hf_convert import hf_to_official
from edgetam_train.export.hf_keys import MODELS
from edgetam_train.export.official import (
    TORCH_TOLERANCE,
    ExportCheckError,
    ExportReport,
    fixed_input,
    image_outputs,
    max_abs_diff,
)
from edgetam_train.models.build import ALIASES
from edgetam_train.models.memory_bank import MemoryBank
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.models.trunk import HieraTrunk, TimmTrunk

# Sam2VideoModel stores memory features in bfloat16 (as the official SAM 2.1 code does) and we round them the same
# way, but fp32 rounding differences flip single bf16 roundings (one bf16 step is 2^-8 relative), which moves the
# tracked frame's logits by up to ~1e-4 on random weights: the tracked-frame check of SAM 2.1 gets this tolerance.
BF16_MEMORY_TOLERANCE = 1e-3

# configs/arch names -> transformers-side names used by hf_keys
HF_NAMES = {ours: theirs for theirs, ours in ALIASES.items()} | {"edgetam": "edgetam"}


def hf_name(model_name: str) -> str:
    """The :mod:`hf_keys` name of a ``configs/arch`` name or alias (``sam2.1_hiera_t`` -> ``sam2.1_hiera_tiny``)."""
    if model_name in MODELS:
        return model_name
    if model_name not in HF_NAMES:
        raise ValueError(f"no transformers export for model {model_name!r}; expected one of "
                         f"{', '.join(sorted(HF_NAMES))}")
    return HF_NAMES[model_name]


def hf_target(model: SAM2Model, model_name: str | None = None) -> tuple[str, TimmTrunkSpec]:
    """The :mod:`hf_keys` name and timm trunk spec of ``model``, from its trunk.

    A :class:`TimmTrunk` -> ``("edgetam", its timm name / levels / channels)``; a :class:`HieraTrunk` ->
    ``sam2.1_hiera_*``. ``model_name`` (a ``configs/arch`` name or alias), when given, must name the same family.

    Raises:
        ValueError: a trunk transformers cannot express (channels-last timm features: ``EdgeTamVisionModel``
            permutes its backbone's maps as channels-first; any other trunk class), or a contradicting ``model_name``.
    """
    trunk = model.image_encoder.trunk
    if isinstance(trunk, TimmTrunk):
        if trunk.channels_last:
            raise ValueError(f"transformers cannot express the timm trunk {trunk.name!r}: its features_only maps are "
                             f"channels-last, and EdgeTamVisionModel reads its timm backbone's maps as channels-first; "
                             f"export --format official or onnx instead")
        name, spec = "edgetam", TimmTrunkSpec(trunk.name, tuple(trunk.out_indices), tuple(trunk.channel_list))
    elif isinstance(trunk, HieraTrunk):
        name, spec = "sam2.1_" + trunk.name.removeprefix("sam2_"), REPVIT_M1
    else:
        raise ValueError(f"transformers cannot express a {type(trunk).__name__} trunk (EdgeTAM exports take a timm "
                         f"features_only trunk, SAM 2.1 exports a Hiera trunk); export --format official or onnx")
    if model_name is not None and not (model_name.startswith("edgetam") and name == "edgetam") \
            and hf_name(model_name) != name:
        raise ValueError(f"model name {model_name!r} does not match the model's trunk ({trunk.name}: {name})")
    return name, spec


def _processor(image_size: int):
    """``Sam2VideoProcessor`` (image + video processors) resizing to ``image_size``, built without downloads."""
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    hw = {"height": image_size, "width": image_size}
    masks = {"height": image_size // 4, "width": image_size // 4}
    return Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size=hw, mask_size=masks),
                              video_processor=Sam2VideoVideoProcessor(size=hw), target_size=image_size)


def save_hf(model: SAM2Model, out_dir: str | Path, model_name: str | None = None) -> Path:
    """Write ``model``'s weights as a transformers directory (video layout + video config + processor config);
    the trunk decides the transformers family and backbone (:func:`hf_target`)."""
    name, spec = hf_target(model, model_name)
    net = build_hf_model(name, model.state_dict(), image_size=model.image_size, target="video", trunk_spec=spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out_dir)
    _processor(model.image_size).save_pretrained(out_dir)
    return out_dir


def load_hf(out_dir: str | Path, model_name: str, target: str) -> torch.nn.Module:
    """``<Class>.from_pretrained(out_dir)`` (fp32, eval) for ``target`` "image" or "video"; raises
    :class:`ExportCheckError` naming any missing, unexpected or mismatched keys."""
    cls = hf_model_class(hf_name(model_name), target)
    net, info = cls.from_pretrained(str(out_dir), output_loading_info=True)
    problems = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise ExportCheckError(f"{cls.__name__}.from_pretrained({out_dir}) reported " +
                         "; ".join(f"{k} ({len(v)}): {v[:20]}" for k, v in problems.items()))
    return net.float().eval()


def check_config(net, model_name: str, image_size: int, target: str, trunk_spec: TimmTrunkSpec = REPVIT_M1
                 ) -> None:
    """Raise :class:`ExportCheckError` naming each setting of the loaded ``net.config`` that differs from
    :func:`hf_config` (extra keys, e.g. the video settings an image config carries along, and dtype / path metadata
    are ignored)."""
    want = flatten_dict(hf_config(hf_name(model_name), image_size, target, trunk_spec).to_dict())
    got = flatten_dict(net.config.to_dict())
    ignored = ("_name_or_path", "architectures", "dtype", "transformers_version")
    wrong = {k: (got.get(k), v) for k, v in want.items()
             if k.rsplit(".", 1)[-1] not in ignored and got.get(k) != v}
    if wrong:
        raise ExportCheckError(f"{type(net).__name__} config differs from the expected {target} config: " +
                         ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in sorted(wrong.items())))


@torch.no_grad()
def _hf_image_outputs(net, pixels: Tensor, points: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``EdgeTamModel`` / ``Sam2Model`` outputs named as :func:`image_outputs` (one object, clicks in input px)."""
    kwargs = dict(pixel_values=pixels, input_points=points.float()[:, None],
                  input_labels=labels.long()[:, None])
    multi = net(multimask_output=True, **kwargs)
    single = net(multimask_output=False, **kwargs)
    return {"multimask_logits": multi.pred_masks[:, 0], "multimask_iou": multi.iou_scores[:, 0],
            "single_logits": single.pred_masks[:, 0], "single_iou": single.iou_scores[:, 0],
            "object_score": multi.object_score_logits[:, 0]}


@torch.no_grad()
def _hf_two_frames(net, image_size: int, frames: Tensor, points: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """Video model through its session API: clicks for object 1 on frame 0, then frame 1 tracked from memory.
    Returns per frame ``low_res_logits`` (1, 1, S/4, S/4) and ``object_score`` (1, 1)."""
    import transformers

    family = "EdgeTam" if isinstance(net, transformers.EdgeTamVideoModel) else "Sam2"
    session = getattr(transformers, f"{family}VideoInferenceSession")(
        video=frames.float(), video_height=image_size, video_width=image_size, inference_device="cpu",
        inference_state_device="cpu", video_storage_device="cpu", dtype=torch.float32)
    # target_size = S and original_size = S: the processor's coordinate normalisation is the identity
    _processor(image_size).add_inputs_to_inference_session(
        session, frame_idx=0, obj_ids=[1], input_points=[[points[0].tolist()]], input_labels=[[labels[0].tolist()]],
        original_size=(image_size, image_size))
    outputs = {0: net(inference_session=session, frame_idx=0)}
    for out in net.propagate_in_video_iterator(session):
        outputs[out.frame_idx] = out
    return [{"low_res_logits": outputs[t].pred_masks.reshape(1, 1, image_size // 4, image_size // 4),
             "object_score": outputs[t].object_score_logits.reshape(1, 1)} for t in (0, 1)]


@torch.no_grad()
def _our_two_frames(model: SAM2Model, frames: Tensor, points: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """The same two frames with :meth:`SAM2Model.track_step` and a :class:`MemoryBank` (transformers' semantics:
    the clicked frame is an initial conditioning frame; its memory mask is binarised; ``Sam2VideoModel`` stores the
    memory features in bfloat16, ``EdgeTamVideoModel`` in float32)."""
    bank, results = MemoryBank(), []
    for t in (0, 1):
        feats = model.encode_image(frames[t:t + 1])
        clicks = dict(point_coords=points.float(), point_labels=labels.to(torch.int32)) if t == 0 else {}
        out = model.track_step(t, t == 0, feats, bank, num_frames=2, **clicks)
        if model.spatial_perceiver is None:  # SAM 2.1
            out.memory = out.memory.to(torch.bfloat16).to(out.memory.dtype)
        bank.add(t, out, is_cond=t == 0)
        results.append({"low_res_logits": out.low_res_masks, "object_score": out.object_score_logits})
    return results


def export_hf(model: SAM2Model, out_dir: str | Path, model_name: str | None = None) -> ExportReport:
    """Write the transformers directory (:func:`save_hf`) and check it (see the module docstring).

    Args:
        model: the source model (unfused, official keys), eval mode.
        out_dir: the directory to write (created).
        model_name: optional ``configs/arch`` name (``edgetam``, ``sam2.1_hiera_t``, ...) or transformers alias;
            checked against the trunk, which decides (:func:`hf_target`).
    Returns:
        an :class:`ExportReport` with the max differences per check (tolerance 1e-4).
    """
    model.eval()
    name, spec = hf_target(model, model_name)
    path = save_hf(model, out_dir, model_name)
    report = ExportReport(path, tolerance=TORCH_TOLERANCE)
    size = model.image_size

    video = load_hf(path, name, "video")
    check_config(video, name, size, "video", spec)
    back = hf_to_official(video.state_dict(), name)
    src = model.state_dict()
    missing = sorted(set(src) - set(back))
    if missing:
        raise ExportCheckError(f"the video model loaded from {path} lacks official tensors: {missing[:20]}")
    report.diffs["video_weights"] = max(max_abs_diff(src[k], back[k]) for k in src)

    pixels, points, labels = fixed_input(size)
    ours = image_outputs(model, pixels, points, labels)
    image = load_hf(path, name, "image")
    check_config(image, name, size, "image", spec)
    theirs = _hf_image_outputs(image, pixels, points, labels)
    report.diffs.update({f"image/{k}": max_abs_diff(ours[k], v) for k, v in theirs.items()})
    del image

    frames = torch.cat([pixels, fixed_input(size, seed=1)[0]])
    for t, (a, b) in enumerate(zip(_our_two_frames(model, frames, points, labels),
                                   _hf_two_frames(video, size, frames, points, labels))):
        for k in a:
            report.diffs[f"video/frame{t}/{k}"] = max_abs_diff(a[k], b[k])
            if t > 0 and model.spatial_perceiver is None:
                report.tolerances[f"video/frame{t}/{k}"] = BF16_MEMORY_TOLERANCE
    return report
