"""transformers reference runners for parity tests (a helper module imported by tests, not a test file).

We feed the *same* pixel tensor to our model and to transformers (never through transformers' processors, which
resize the uint8 image and move pixels slightly), build the transformers model from our official-layout weights
(:func:`edgetam_train.export.hf_convert.official_to_hf`), and return raw low-resolution outputs.

* :func:`random_official_state_dict` -- random weights in the official layout with values that keep every path
  alive (masks / IoUs / object scores are finite and not constant).
* :func:`hf_image_predict` -- ``EdgeTamModel`` / ``Sam2Model`` on ``pixel_values``: low-res mask logits, IoU,
  object score logits (no upscaling, no thresholding).
* :func:`hf_video_track` -- ``EdgeTamVideoModel`` / ``Sam2VideoModel`` through the inference-session API on a
  click / propagate / correct / propagate scenario (:class:`VideoScenario`).

How the video runner bypasses the processor: ``Sam2VideoProcessor.init_video_session(video)`` runs the video
processor (resize + normalise) and then builds ``<Family>VideoInferenceSession(video=pixel_values_video[0],
video_height, video_width, inference_device, dtype, ...)``; we build that session ourselves with our normalised
``(T, 3, S, S)`` frames and ``video_height = video_width = S``. Clicks still go through the real
``Sam2VideoProcessor.add_inputs_to_inference_session`` (built offline with ``target_size=S``), whose coordinate
normalisation ``xy * target_size / original_size`` is then the identity, so points are pixel xy in the S x S
input. The per-frame masks returned by ``model(session, frame_idx)`` / ``propagate_in_video_iterator`` are the
low-res logits ``(num_objs, 1, S/4, S/4)`` (``pred_masks``), i.e. *before* ``post_process_masks`` upsamples them to
the video size. IoU is not part of transformers' video output: we record the IoU of the selected mask by wrapping
``_single_frame_forward`` (argmax-IoU mask when multimask, the dynamic-stability pick otherwise).

Video semantics our predictor must reproduce to match transformers 5.x (``modeling_edgetam_video.py`` /
``modeling_sam2_video.py``; official = ``sam2`` 1.1.0 ``SAM2VideoPredictor`` / EdgeTAM's older predictor):

1. Objects are tracked one at a time (``forward``: loop over ``obj_idx``, ``batch_size=1``); each object has its own
   ``cond_frame_outputs`` / ``non_cond_frame_outputs``; vision features are computed once per frame and shared.
   ``Sam2VideoModel`` then runs the memory encoder batched over the objects recomputed on that frame
   (``_batch_encode_memories``); ``EdgeTamVideoModel`` encodes per object inside ``_run_single_frame_inference``.
2. New inputs: ``add_inputs_to_inference_session`` *replaces* ``session.obj_with_new_inputs`` with the call's
   ``obj_ids`` -- objects clicked on the same frame must be added in one call. ``clear_old_inputs=True`` (default)
   replaces earlier clicks of that object on that frame, ``False`` appends to them; a box becomes two points with
   labels 2, 3 placed before the clicks (boxes require ``clear_old_inputs=True``).
3. Conditioning frames: a frame with new inputs for an object is an *initial conditioning frame*
   (``is_init_cond_frame``) iff that frame is not in ``session.frames_tracked_per_obj[obj]``. Only those are
   stored in ``cond_frame_outputs``; they use no memory (``_prepare_memory_conditioned_features`` returns
   ``features + no_memory_embedding``, i.e. ``directly_add_no_mem_embed``). A click on an already *tracked* frame
   (our correction on frame 2) has ``is_init_cond_frame=False``: it is run memory-conditioned (like tracking) with
   the clicks as prompts and stored in ``non_cond_frame_outputs`` (official: same, ``add_all_frames_to_correct_as_cond
   =False``). Initial conditioning frames are never added to ``frames_tracked_per_obj``.
4. Previous mask logits with a correction click: transformers does NOT feed them (``forward`` never passes
   ``prev_sam_mask_logits``, so the decoder gets ``no_mask_embed``). The official predictor feeds the frame's previous
   low-res logits clamped to [-32, 32] as the mask prompt. To match transformers, use no mask prompt.
5. Multimask: ``_use_multimask`` = ``multimask_output_in_sam and (is_init_cond_frame or
   multimask_output_for_tracking) and 0 <= num_points <= 1`` -> 3 masks on single-click frames *and on every tracked
   frame without clicks* (num_points 0) *and on a one-click correction* (our frame 2); the mask with the highest
   predicted IoU is kept
   (``_single_frame_forward``: argmax over ``iou_scores``), and its output token makes the object pointer
   (``use_multimask_token_for_obj_ptr``). With >= 2 points: single mask output, where the decoder's
   ``_dynamic_multimask_via_stability`` (delta 0.05, threshold 0.98, eval only) falls back to the best of the 3
   multimask outputs when token 0's stability score is below the threshold.
6. Object score: masks of a frame whose ``object_score_logits <= 0`` are replaced by ``NO_OBJ_SCORE = -1024``
   (low-res and high-res, before selection); the pointer becomes ``no_object_pointer`` (``fixed_no_obj_ptr``,
   hard 0/1 gate, no soft score). SAM 2.1 adds ``occlusion_spatial_embedding_parameter`` (``no_obj_embed_spatial``)
   to the memory of such frames.
7. Memory encoding happens right after each frame is decoded (``run_mem_encoder=True`` in ``forward``, also for
   clicked frames -- there is no separate "consolidation" step, no non-overlap constraint
   (``non_overlap_masks_for_mem_enc=False``)). Input mask = the *high-res* (S x S bilinear, align_corners=False)
   logits of the selected mask; for frames with point (or mask) inputs it is binarised ``(logits > 0)``
   (``binarize_mask_from_pts_for_mem_enc``), otherwise ``sigmoid``; then ``* 20 - 10``. Quirk of
   ``Sam2VideoModel._batch_encode_memories``: ``is_mask_from_pts=any(...)`` over the objects of that frame, so when
   one object is clicked on a frame, the masks of *all* objects recomputed on that frame are binarised;
   ``EdgeTamVideoModel`` decides per object. ``Sam2VideoModel`` stores ``maskmem_features`` as bfloat16 (cast back
   to fp32 when read; official SAM 2.1 does the same); ``EdgeTamVideoModel`` keeps fp32 (official EdgeTAM casts to
   bf16). EdgeTAM: the memory encoder output goes through the 2D spatial perceiver (256 global + 256 window latents;
   positional encodings: zeros for the global latents, sine of the 16x16 grid for the window latents).
8. A frame that already has a conditioning output for an object and no new inputs is not recomputed (the cached
   ``pred_masks`` / ``object_score_logits`` are returned). Every other frame is recomputed each time it is visited
   and *overwrites* ``non_cond_frame_outputs`` -- including a corrected frame if it is propagated over again
   without new inputs. Hence our runner starts the second propagation at the corrected frame
   (``start_frame_idx=2``); frames before it keep their first-pass outputs (identical anyway).
9. Memory selection for frame t (``_gather_memory_frame_outputs``): all conditioning frames
   (``max_cond_frame_num=-1``; with a limit, ``_select_closest_cond_frames`` keeps the closest before / after and
   the rest by distance, unselected ones can fill the non-cond slots), temporal-encoding index
   ``num_maskmem - 1``; then the non-conditioning outputs of frames t-6 .. t-1 (t+6 .. t+1 in reverse; stride 1),
   oldest first, index ``offset - 1``. Missing frames are skipped. Cond frames come first, in insertion order.
10. Object pointers (``_get_object_pointers``): in eval only conditioning frames with t_c <= t (>= in reverse),
    offset ``t - t_c``; then non-cond frames t-1 .. t-(P-1) with offset d, P = min(num_frames, 16)
    (``max_object_pointers_in_encoder``); streaming uses P = 16. EdgeTAM: pointer positional encoding is zero
    (``enable_temporal_pos_encoding_for_object_pointers=False``); SAM 2.1: ``get_1d_sine_pe(offset / (P - 1), 256)``
    -> ``temporal_positional_encoding_projection_layer`` (64). Each 256-d pointer is split into 4 tokens of 64;
    pointer tokens are appended after the spatial memories and excluded from RoPE (``num_k_exclude_rope``). Note:
    transformers takes pointers from *all* conditioning frames, the official code only from the selected ones
    (differs only when ``max_cond_frame_num`` is set).
11. Memory attention input: current stride-16 features + 0.1 * their sine position encoding (queries get RoPE on
    the S/16 grid). SAM 2.1 cross-attention keys: each memory frame's S/16 x S/16 tokens get the same RoPE table
    (repeated per frame, ``rope_k_repeat``). EdgeTAM (``apply_rotary_pos_emb_2d_cross_attn``): each memory frame is
    [256 global latents, 256 window latents]; the global ones are NOT rotated, the window ones get a 16x16 RoPE table
    (``memory_attention_rope_k_sizes``), repeated per memory frame; object-pointer tokens are never rotated.
12. No hole filling / sprinkle removal / non-overlap in the model: transformers only offers them in
    ``Sam2VideoProcessor.post_process_masks(max_hole_area, max_sprinkle_area, apply_non_overlapping_constraints)``
    (defaults off, output only, never fed back to memory). The official predictor's ``fill_hole_area=8`` also changes
    the stored ``pred_masks`` (used as the correction mask prompt). To match transformers: ``fill_hole_area=0``.
13. Propagation order (``propagate_in_video_iterator``): default start = the earliest frame in any object's
    ``cond_frame_outputs``; forward to the last frame (or ``max_frame_num_to_track``), ``reverse=True`` backwards;
    a new initial conditioning frame always runs with ``reverse=False``.
    Without ``start_frame_idx`` it needs a conditioning output to exist, so the clicked frame is first run with
    ``model(session, frame_idx=f0)`` (as in the transformers docs).
14. Mask inputs (not in our scenario): ``_use_mask_as_output`` turns the binary mask into logits ``20 * m - 10``
    (low-res via antialiased bilinear), IoU 1, object pointer from a decoder pass on ``mask_downsample(mask)``,
    object score +10 / -10 from "any pixel > 0".

Where the official predictors differ (measured on the same random weights, S=256, 5 frames): the first pass
(clicks on frame 0 + propagation) matches to 5.5e-5 for SAM 2.1-T and to 2e-5 for EdgeTAM once our scratch copy of
``EdgeTamVideoModel`` rounds memories to bf16 like the official code (3.7e-4 without); after the correction they
differ by O(1): (a) prev-mask-logits prompt (item 4); (b) official memory of clicked frames is encoded once, in
``propagate_in_video_preflight`` after consolidating the clicks, and the official EdgeTAM predictor (SAM 2.0-style)
re-encodes *all* objects of a clicked frame binarised, SAM 2.1 1.1.0 only the clicked objects; (c) the official
EdgeTAM predictor keeps consolidated non-conditioning (corrected) frames when propagating over them
(``consolidated_frame_inds``), whereas 1.1.0 and transformers re-track them; (d) ``fill_hole_area=8`` in the official
video builder; (e) bf16 memories (item 7); (f) the official EdgeTAM predictor tracks all objects as one batch, and its
``PerceiverResampler.forward_2d`` then fails for more than one object (``expand(B).view`` on a non-contiguous tensor)
-- transformers (and ours) must treat the batch dimension properly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from edgetam_train.export.hf_config import build_hf_model
from tests.helpers.reference import read_layout

# ----------------------------------------------------------------------------------------------- weights

def official_layout(model: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Official ``{key: (shape, dtype)}`` of ``model`` from ``shared/reference`` (see tests/helpers/reference.py)."""
    return read_layout(model)


_EMBEDDINGS = re.compile(r"(point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|mask_tokens|"
                         r"obj_score_token)\.weight$")
_SMALL_PARAMS = re.compile(r"(pos_embed|pos_embed_window|maskmem_tpos_enc|no_mem_embed|no_mem_pos_enc|no_obj_ptr|"
                           r"no_obj_embed_spatial)$")
# Final bias of the object-score MLP: shifted up so objects are "present" (otherwise masks become -1024 everywhere).
OBJECT_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
OBJECT_SCORE_BIAS = 3.0


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """One random official tensor (float32) whose scale keeps activations O(1) through the network."""
    def normal(std: float) -> Tensor:
        return torch.randn(shape, generator=gen) * std

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        return uniform(0.5, 1.5)
    if name == "running_mean":
        return normal(0.1)
    if key.endswith("positional_encoding_gaussian_matrix"):
        return normal(1.0)  # official init: randn (scale 1); small values would make all prompts look alike
    if name == "gamma":
        return uniform(0.1, 1.0)  # CXBlock layer scale: nonzero so the fuser path matters
    if key == OBJECT_SCORE_BIAS_KEY:
        return torch.full(shape, OBJECT_SCORE_BIAS)
    if name in ("latents", "latents_2d"):
        return normal(1.0)  # official init: randn
    if _EMBEDDINGS.search(key):
        return normal(0.5)
    if _SMALL_PARAMS.search(key):
        return normal(0.1)
    if name == "bias":
        return normal(0.02)
    if name == "weight" and len(shape) == 1 and key.startswith("image_encoder.trunk.body."):
        return uniform(0.4, 0.8)  # RepViT BatchNorm scale: ~1 makes the residual stages blow up (std 1e6 at stride 32)
    if name == "weight" and len(shape) == 1:
        return uniform(0.8, 1.2)  # LayerNorm / BatchNorm scale
    if name == "weight":
        fan_in = math.prod(shape[1:])
        return normal(1.0 / math.sqrt(fan_in))
    raise ValueError(f"no random-init rule for {key!r} {shape}")


def random_official_state_dict(model: str, seed: int) -> dict[str, Tensor]:
    """Random official-format weights of ``model`` (keys, shapes, dtypes = the reference tsv), deterministic in
    ``seed``.

    Values: conv / linear weights N(0, 1/fan_in), biases N(0, 0.02), norm scales U(0.8, 1.2) (RepViT BatchNorm
    scales U(0.4, 0.8), which keeps its features O(0.3) instead of exploding), BatchNorm running_mean
    N(0, 0.1) / running_var U(0.5, 1.5), num_batches_tracked int64 0-d zeros, layer-scale gammas U(0.1, 1),
    gaussian PE matrix and perceiver latents N(0, 1), prompt / output token embeddings N(0, 0.5), other small learned
    tensors N(0, 0.1); the object-score head's last bias is +3 so objects count as present (frames are not blanked to
    -1024). Returns ``{key: tensor}`` in tsv order.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in official_layout(model).items():
        if dtype == torch.int64:
            out[key] = torch.zeros(shape, dtype=torch.int64)
        else:
            out[key] = _random_tensor(key, shape, gen)
    return out


# ----------------------------------------------------------------------------------------------- image

@torch.no_grad()
def hf_image_predict(official_sd: Mapping[str, Tensor], model: str, image: Tensor, points: Tensor | None,
                     labels: Tensor | None, box: Tensor | None = None, mask_input: Tensor | None = None,
                     multimask: bool = True) -> dict[str, Tensor]:
    """Run ``EdgeTamModel`` / ``Sam2Model`` (fp32, eval) on one image and prompts.

    Args:
        official_sd: official-layout weights.
        model: "edgetam" or "sam2.1_hiera_{tiny,small,base_plus,large}".
        image: (1, 3, S, S) float, already normalised (fed as ``pixel_values``); S sets the config's image size.
        points: (1, N, 2) pixel xy in the S x S input, or None.
        labels: (1, N) int (1 positive, 0 negative), or None.
        box: (1, 4) pixel x0 y0 x1 y1, or None (transformers appends the box corners after the points; the official
            predictor puts them first -- the decoder is permutation invariant over prompt tokens).
        mask_input: (1, 1, S/4, S/4) low-res mask logits used as dense prompt, or None.
        multimask: 3 masks (True) or 1 mask with dynamic-stability fallback (False).

    Returns:
        dict ``low_res_logits`` (1, M, S/4, S/4), ``iou`` (1, M), ``object_score_logits`` (1, 1); M = 3 or 1.
    """
    size = image.shape[-1]
    net = build_hf_model(model, official_sd, image_size=size, target="image")
    kwargs = {}
    if points is not None:
        kwargs["input_points"] = points.float()[:, None]  # (1, 1, N, 2): one object
        kwargs["input_labels"] = labels.to(torch.int64)[:, None]
    if box is not None:
        kwargs["input_boxes"] = box.float().reshape(1, 1, 4)
    if mask_input is not None:
        kwargs["input_masks"] = mask_input.float().reshape(1, 1, size // 4, size // 4)
    out = net(pixel_values=image.float(), multimask_output=multimask, **kwargs)
    return {"low_res_logits": out.pred_masks[:, 0], "iou": out.iou_scores[:, 0],
            "object_score_logits": out.object_score_logits[:, 0]}


# ----------------------------------------------------------------------------------------------- video

@dataclass
class Click:
    """Clicks for one object on one frame: ``points`` (N, 2) pixel xy in the S x S input, ``labels`` (N,) 1 / 0."""

    frame: int
    obj_id: int
    points: Tensor
    labels: Tensor


@dataclass
class VideoScenario:
    """``initial`` clicks (all on one frame, added in one call), propagate over the whole clip, then for each frame
    in ``corrections`` add those clicks (one call per frame) and propagate again from that frame to the end."""

    initial: list[Click]
    corrections: list[Click] = field(default_factory=list)


def default_video_scenario(size: int) -> VideoScenario:
    """2 objects (ids 1, 2) with one positive click each on frame 0; a negative correction click for object 2 on
    frame 2."""
    def pt(x: float, y: float) -> Tensor:
        return torch.tensor([[x * size, y * size]])

    return VideoScenario(
        initial=[Click(0, 1, pt(0.30, 0.35), torch.tensor([1])), Click(0, 2, pt(0.70, 0.60), torch.tensor([1]))],
        corrections=[Click(2, 2, pt(0.65, 0.55), torch.tensor([0]))],
    )


def _processor(size: int):
    """``Sam2VideoProcessor`` built offline whose point normalisation is the identity for an S x S video."""
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    hw = {"height": size, "width": size}
    return Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size=hw),
                              video_processor=Sam2VideoVideoProcessor(size=hw), target_size=size)


def _session(model: str, frames: Tensor):
    """The transformers inference session holding our normalised frames (what init_video_session builds)."""
    import transformers

    family = "EdgeTam" if model == "edgetam" else "Sam2"
    session_cls = getattr(transformers, f"{family}VideoInferenceSession")
    size = frames.shape[-1]
    return session_cls(video=frames.float(), video_height=size, video_width=size, inference_device="cpu",
                       inference_state_device="cpu", video_storage_device="cpu", dtype=torch.float32)


def _add_clicks(processor, session, clicks: Sequence[Click]) -> None:
    """Add the clicks of one frame (all objects in one call, as transformers requires)."""
    frames = {c.frame for c in clicks}
    if len(frames) != 1:
        raise ValueError(f"clicks added together must share one frame, got frames {sorted(frames)}")
    n = max(len(c.labels) for c in clicks)
    points = [[c.points.tolist() + [[-10.0, -10.0]] * (n - len(c.labels)) for c in clicks]]
    labels = [[c.labels.tolist() + [-10] * (n - len(c.labels)) for c in clicks]]
    size = session.video_height
    processor.add_inputs_to_inference_session(session, frame_idx=frames.pop(), obj_ids=[c.obj_id for c in clicks],
                                              input_points=points, input_labels=labels, original_size=(size, size))


class _IouRecorder:
    """Wraps a video model's ``_run_single_frame_inference`` / ``_single_frame_forward`` to record, per (frame,
    object index), the IoU of the mask transformers selects (the decoder's IoU output is not returned otherwise)."""

    def __init__(self, net):
        self.iou: dict[tuple[int, int], Tensor] = {}
        self._where: tuple[int, int] | None = None
        run, single = net._run_single_frame_inference, net._single_frame_forward

        def run_wrapped(*args, **kwargs):
            self._where = (kwargs["frame_idx"], kwargs["obj_idx"])
            try:
                return run(*args, **kwargs)
            finally:
                self._where = None

        def single_wrapped(*args, **kwargs):
            out = single(*args, **kwargs)
            if self._where is not None:
                mask_as_output = kwargs.get("input_points") is None and kwargs.get("input_masks") is not None
                # multimask: transformers keeps the argmax-IoU mask; mask inputs get a dummy IoU of 1
                best = out.iou_scores.reshape(-1).max().reshape(1)
                self.iou[self._where] = torch.ones_like(best) if mask_as_output else best
            return out

        net._run_single_frame_inference = run_wrapped
        net._single_frame_forward = single_wrapped


@torch.no_grad()
def hf_video_track(official_sd: Mapping[str, Tensor], model: str, frames: Tensor,
                   scenario: VideoScenario | None = None) -> dict[int, dict[str, Tensor]]:
    """Run ``EdgeTamVideoModel`` / ``Sam2VideoModel`` (fp32, eval, CPU) through the inference-session API.

    Steps: build the session on ``frames``; add ``scenario.initial`` (one processor call); ``model(session,
    frame_idx=f0)``; ``propagate_in_video_iterator(session)`` (f0 .. T-1); for each correction frame c (ascending):
    add its clicks, ``propagate_in_video_iterator(session, start_frame_idx=c)``. Later passes overwrite earlier
    outputs; the module docstring lists the semantics this implies.

    Args:
        official_sd: official-layout weights.
        model: "edgetam" or "sam2.1_hiera_*".
        frames: (T, 3, S, S) normalised float frames, T >= 4.
        scenario: clicks; None = :func:`default_video_scenario`.

    Returns:
        ``{frame_idx: {"low_res_logits": (num_objs, 1, S/4, S/4), "object_score_logits": (num_objs, 1),
        "iou": (num_objs, 1)}}`` for every frame, objects in order of first appearance (``session.obj_ids``).
    """
    size = frames.shape[-1]
    scenario = default_video_scenario(size) if scenario is None else scenario
    net = build_hf_model(model, official_sd, image_size=size, target="video")
    recorder = _IouRecorder(net)
    processor = _processor(size)
    session = _session(model, frames)

    results: dict[int, dict[str, Tensor]] = {}

    def record(output) -> None:
        idx = output.frame_idx
        ious = [recorder.iou[(idx, k)] for k in range(len(output.object_ids))]
        results[idx] = {"low_res_logits": output.pred_masks.detach().clone(),
                        "object_score_logits": output.object_score_logits.detach().reshape(-1, 1).clone(),
                        "iou": torch.stack(ious).reshape(-1, 1)}

    _add_clicks(processor, session, scenario.initial)
    record(net(inference_session=session, frame_idx=scenario.initial[0].frame))
    for output in net.propagate_in_video_iterator(session):
        record(output)
    by_frame: dict[int, list[Click]] = {}
    for click in scenario.corrections:
        by_frame.setdefault(click.frame, []).append(click)
    for frame in sorted(by_frame):
        _add_clicks(processor, session, by_frame[frame])
        for output in net.propagate_in_video_iterator(session, start_frame_idx=frame):
            record(output)
    return dict(sorted(results.items()))
