"""The whole model stack (issue "Model stack"): every variant's layout equals the official checkpoint, bad variants and
sizes fail clearly, ``track_step`` runs a 3-frame clip through memory with finite outputs and gradients, and the
frozen teacher stays frozen inside a training parent module.

Big models are built on the meta device (layout checks only); forward tests run at 256 px.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from edgetam_train.distill.teacher import FrozenTeacher
from edgetam_train.models.build import available_models, build_model
from edgetam_train.models.memory_bank import FrameOutput, MemoryBank
from edgetam_train.models.sam2_model import ImageFeatures, SAM2Model
from tests.helpers.hf_reference import random_official_state_dict
from tests.helpers.reference import read_layout, total_params

S = 256  # smallest size EdgeTAM's perceiver accepts (16x16 windows of the S/16 memory)
# our build name -> reference / transformers name
VARIANTS = {
    "edgetam": "edgetam",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny",
    "sam2.1_hiera_s": "sam2.1_hiera_small",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus",
    "sam2.1_hiera_l": "sam2.1_hiera_large",
}


# ----------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_layout_and_param_count_equal_official(name):
    """Keys, their order and shapes equal the official checkpoint's; parameter count equals its ``# total params``."""
    with torch.device("meta"):
        model = build_model(name)
    ref = read_layout(VARIANTS[name])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(ref), (
        f"{name}: key order differs; missing {[k for k in ref if k not in ours][:5]}, "
        f"unexpected {[k for k in ours if k not in ref][:5]}")
    wrong = {k: (ours[k], ref[k][0]) for k in ref if ours[k] != ref[k][0]}
    assert not wrong, f"{name}: shape mismatches (ours, official): {dict(list(wrong.items())[:5])}"
    assert sum(p.numel() for p in model.parameters()) == total_params(VARIANTS[name])


def test_documented_param_counts():
    """The two numbers the design brief quotes (EdgeTAM, SAM 2.1 B+)."""
    assert total_params("edgetam") == 13_895_794
    assert total_params("sam2.1_hiera_base_plus") == 80_850_178
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model("edgetam").parameters()) == 13_895_794
        assert sum(p.numel() for p in build_model("sam2.1_hiera_b+").parameters()) == 80_850_178


def test_available_models_and_aliases():
    assert set(VARIANTS) <= set(available_models())
    with torch.device("meta"):
        model = build_model("sam2.1_hiera_tiny")  # transformers-style alias
    assert model.image_encoder.trunk.name == "sam2_hiera_tiny"


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model variant 'edgetam_xl'") as err:
        build_model("edgetam_xl")
    for name in VARIANTS:
        assert name in str(err.value)


@pytest.mark.parametrize("size", [384, 320, 100])
def test_edgetam_image_size_must_be_multiple_of_256(size):
    with pytest.raises(ValueError, match=rf"image_size {size}|image_size must be a multiple of 32") as err:
        with torch.device("meta"):
            build_model("edgetam", image_size=size)
    assert "multiple of" in str(err.value)


def test_sam21_accepts_multiples_of_32():
    with torch.device("meta"):
        assert build_model("sam2.1_hiera_t", image_size=288).image_size == 288
    with pytest.raises(ValueError, match="multiple of 32"), torch.device("meta"):
        build_model("sam2.1_hiera_t", image_size=300)


# ----------------------------------------------------------------------------------------------- forward

def _model(name: str, seed: int = 0) -> SAM2Model:
    """``name`` at S px with random official-format weights whose object-score head says "present"."""
    model = build_model(name, image_size=S)
    model.load_state_dict(random_official_state_dict(VARIANTS[name], seed))
    return model


@pytest.fixture(scope="module")
def edgetam() -> SAM2Model:
    return _model("edgetam")


@pytest.fixture(scope="module")
def hiera_t() -> SAM2Model:
    return _model("sam2.1_hiera_t")


def _run_clip(model: SAM2Model, frames: torch.Tensor) -> tuple[list[ImageFeatures], list[FrameOutput]]:
    """Click on frame 0 (initial conditioning frame), then track frames 1 and 2 from memory (B objects = B frames'
    batch rows)."""
    b = frames.shape[1]
    bank = MemoryBank()
    feats, outs = [], []
    clicks = torch.tensor([[[0.4 * S, 0.5 * S]]]).expand(b, 1, 2)
    labels = torch.ones(b, 1, dtype=torch.int32)
    for t in range(frames.shape[0]):
        f = model.encode_image(frames[t])
        init = t == 0
        out = model.track_step(t, init, f, bank, num_frames=frames.shape[0],
                               point_coords=clicks if init else None, point_labels=labels if init else None)
        bank.add(t, out, is_cond=init)
        feats.append(f)
        outs.append(out)
    return feats, outs


@pytest.mark.parametrize("name", ["edgetam", "sam2.1_hiera_t"])
def test_track_step_three_frames_shapes(name, request):
    model = request.getfixturevalue("edgetam" if name == "edgetam" else "hiera_t").eval()
    b, h = 2, S // 16
    frames = torch.randn(3, b, 3, S, S, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats, outs = _run_clip(model, frames)
    n_mem = 512 if name == "edgetam" else h * h  # perceiver: 256 global + 256 window latents
    for t, (f, out) in enumerate(zip(feats, outs)):
        assert f.f16.shape == f.f16_pos.shape == (b, 256, h, h)
        assert [tuple(x.shape) for x in f.high_res] == [(b, 32, S // 4, S // 4), (b, 64, S // 8, S // 8)]
        assert out.pix_feat.shape == (b, 256, h, h)  # F_M
        assert out.low_res_masks.shape == (b, 1, S // 4, S // 4)
        assert out.high_res_masks.shape == (b, 1, S, S)
        assert out.multimasks.shape == (b, 3, S // 4, S // 4)  # one click / no click: multimask
        assert out.ious.shape == (b, 3)
        assert out.obj_ptr.shape == (b, 256)
        assert out.object_score_logits.shape == (b, 1)
        assert out.memory.shape == out.memory_pos.shape == (b, n_mem, 64)
        for field in ("pix_feat", "low_res_masks", "high_res_masks", "ious", "obj_ptr", "object_score_logits",
                      "memory", "memory_pos"):
            assert torch.isfinite(getattr(out, field)).all(), f"frame {t}: {field} not finite"
    # frame 0 adds the no-memory embedding; later frames read memory, so F_M differs from F16
    no_mem = feats[0].f16 + model.no_mem_embed.view(1, -1, 1, 1)
    torch.testing.assert_close(outs[0].pix_feat, no_mem)
    assert not torch.allclose(outs[1].pix_feat, feats[1].f16, atol=1e-3)
    # memory is really read: a different frame-0 memory changes frame 1's F_M
    bank = MemoryBank()
    bank.add(0, outs[0], is_cond=True)
    with torch.no_grad():
        ctx = model.read_memory(1, bank, num_frames=3)
        assert ctx.num_spatial_mem == 1 and ctx.tokens.shape[1] == n_mem + 4  # + one pointer split into 4 tokens
        fm = model.condition(feats[1], ctx)
        torch.testing.assert_close(fm, outs[1].pix_feat)
        outs[0].memory = outs[0].memory + 1.0
        assert not torch.allclose(model.condition(feats[1], model.read_memory(1, bank, 3)), fm)


def test_track_step_without_memory_on_tracked_frame_errors(edgetam):
    feats = edgetam.eval().encode_image(torch.zeros(1, 3, S, S))
    with pytest.raises(ValueError, match="memory bank is empty"):
        edgetam.track_step(1, False, feats, MemoryBank(), num_frames=3)


def test_encode_image_rejects_wrong_size(edgetam):
    with pytest.raises(ValueError, match=rf"\(B, 3, {S}, {S}\)"):
        edgetam.encode_image(torch.zeros(1, 3, 2 * S, 2 * S))


def test_gradients_flow_from_fm_and_masks():
    """A loss on F_M (frames that read memory) and on the masks reaches the trunk, neck, memory attention, memory
    encoder, perceiver and the SAM heads of the student. An inference-mode pass first fills the position-encoding and
    RoPE caches: tensors made there must not break the training pass (inference tensors cannot be saved for
    backward)."""
    model = _model("edgetam", seed=1)
    frames = torch.randn(3, 1, 3, S, S, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _run_clip(model.eval(), frames)
    _, outs = _run_clip(model.train(), frames)
    loss_fm = sum(out.pix_feat.square().mean() for out in outs[1:])
    loss_mask = sum(out.low_res_masks.sigmoid().mean() + out.ious.mean() for out in outs)
    (loss_fm + loss_mask).backward()
    groups = {}
    for key, p in model.named_parameters():
        prefix = ".".join(key.split(".")[:2])
        g = 0.0 if p.grad is None else float(p.grad.abs().sum())
        groups[prefix] = groups.get(prefix, 0.0) + g
    for prefix in ("image_encoder.trunk", "image_encoder.neck", "memory_attention.layers", "memory_encoder.fuser",
                   "memory_encoder.mask_downsampler", "spatial_perceiver.layers", "spatial_perceiver.latents",
                   "sam_mask_decoder.transformer", "sam_prompt_encoder.point_embeddings", "obj_ptr_proj.layers",
                   "maskmem_tpos_enc", "no_mem_embed"):
        assert groups.get(prefix, 0.0) > 0, f"no gradient reached {prefix}"


def test_gradients_flow_from_fm_only():
    """MSE on F_M alone trains the trunk, memory attention and (through memory) the memory encoder."""
    model = _model("sam2.1_hiera_t", seed=3).train()
    frames = torch.randn(3, 1, 3, S, S, generator=torch.Generator().manual_seed(4))
    _, outs = _run_clip(model, frames)
    outs[2].pix_feat.square().mean().backward()
    for prefix in ("image_encoder.trunk.", "memory_attention.", "memory_encoder.", "sam_mask_decoder."):
        grads = [p.grad for k, p in model.named_parameters() if k.startswith(prefix) and p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reached {prefix}"


# ----------------------------------------------------------------------------------------------- teacher

class _Parent(nn.Module):
    """A stand-in for the training module: a trainable student and a frozen teacher as children."""

    def __init__(self, student: nn.Module, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher


@pytest.fixture(scope="module")
def teacher() -> FrozenTeacher:
    return FrozenTeacher(build_model("sam2.1_hiera_t", image_size=S), allow_random_init=True)


def test_teacher_stays_frozen_inside_parent(teacher):
    parent = _Parent(nn.Linear(2, 2), teacher)
    parent.train()
    assert parent.student.training
    assert not any(m.training for m in teacher.modules()), "a teacher module switched to train()"
    teacher.train(True)
    assert not teacher.training and not teacher.net.training
    assert not any(p.requires_grad for p in teacher.parameters())
    opt_params = [p for p in parent.parameters() if p.requires_grad]
    assert len(opt_params) == 2  # only the student's weight and bias would reach an optimizer


def test_teacher_runs_without_autograd(teacher):
    images = torch.randn(1, 3, S, S, requires_grad=True)
    feats = teacher.encode_image(images)
    assert feats.f16.shape == (1, 256, S // 16, S // 16)
    assert feats.f16.grad_fn is None and not feats.f16.requires_grad
    assert all(h.grad_fn is None for h in feats.high_res)
    assert teacher.image_size == S  # attributes delegate to the wrapped model


def test_teacher_requires_checkpoint(caplog):
    with torch.device("meta"):
        net = build_model("sam2.1_hiera_t", image_size=S)
    with pytest.raises(ValueError, match="no teacher checkpoint.*allow_random_init"):
        FrozenTeacher(net)
    with caplog.at_level(logging.WARNING, logger="edgetam_train.distill.teacher"):
        FrozenTeacher(net, allow_random_init=True)
    assert any("RANDOMLY INITIALISED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_teacher_loads_checkpoint(tmp_path, hiera_t):
    from edgetam_train.models.checkpoint import save_checkpoint

    path = save_checkpoint(hiera_t, tmp_path / "teacher.pt")
    teacher = FrozenTeacher(build_model("sam2.1_hiera_t", image_size=S), checkpoint=path)
    for (k, a), b in zip(hiera_t.state_dict().items(), teacher.net.state_dict().values()):
        assert torch.equal(a, b), k
