"""Memory path modules: memory encoder, RoPE attention, memory attention, spatial perceiver.

Checks key names/shapes against the official checkpoint layouts in shared/reference, output shapes, the RoPE
rotation rules (which key tokens are rotated), the perceiver's official quirks, and that gradients flow.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetam_train.models.memory_attention import MemoryAttention, MemoryAttentionLayer
from edgetam_train.models.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from edgetam_train.models.perceiver import SpatialPerceiver
from edgetam_train.models.position_encoding import PositionEmbeddingSine
from edgetam_train.models.rope_attention import RoPEAttention, apply_rope, axial_rope_table
from tests.helpers.reference import reference_dir

REFERENCE = reference_dir()



def reference_rows(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """{key without prefix: shape} of the tsv rows under ``prefix`` (header and '#' lines skipped)."""
    path = REFERENCE / name
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        if key.startswith(prefix):
            rows[key[len(prefix):]] = () if shape == "()" else tuple(int(s) for s in shape.split("x"))
    assert rows, f"no rows with prefix {prefix} in {name}"
    return rows


def layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- builders (official configs)

def build_memory_encoder() -> MemoryEncoder:
    """EdgeTAM / SAM 2.1 memory encoder (identical configs)."""
    return MemoryEncoder(
        out_dim=64,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(256, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True), 2),
        position_encoding=PositionEmbeddingSine(64),
    )


def build_memory_attention(edgetam: bool, dropout: float = 0.1) -> MemoryAttention:
    """EdgeTAM (2 layers, 16×16 key grid) or SAM 2.1 (4 layers, keys on the query grid) memory attention."""
    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=RoPEAttention(256, 1, dropout=dropout, kv_in_dim=64, k_sizes=(16, 16) if edgetam else None),
        d_model=256, dim_feedforward=2048, dropout=dropout, pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(256, 1, dropout=dropout),
    )
    return MemoryAttention(256, pos_enc_at_input=True, layer=layer, num_layers=2 if edgetam else 4)


def build_perceiver() -> SpatialPerceiver:
    return SpatialPerceiver(dim=64, depth=2, dim_head=64, heads=1, num_latents=256, num_latents_2d=256, ff_mult=4,
                            position_encoding=PositionEmbeddingSine(64), use_self_attn=True)


# ---------------------------------------------------------------- checkpoint layouts

@pytest.mark.parametrize("tsv", ["edgetam_state_dict.tsv", "sam2.1_hiera_base_plus_state_dict.tsv"])
def test_memory_encoder_keys(tsv):
    assert layout(build_memory_encoder()) == reference_rows(tsv, "memory_encoder.")


@pytest.mark.parametrize("tsv,edgetam", [("edgetam_state_dict.tsv", True),
                                         ("sam2.1_hiera_base_plus_state_dict.tsv", False)])
def test_memory_attention_keys(tsv, edgetam):
    assert layout(build_memory_attention(edgetam)) == reference_rows(tsv, "memory_attention.")


def test_perceiver_keys():
    assert layout(build_perceiver()) == reference_rows("edgetam_state_dict.tsv", "spatial_perceiver.")


def test_state_dict_order_matches_reference():
    """The official loader is strict by name only, but same order makes diffs of checkpoints readable."""
    assert list(build_perceiver().state_dict()) == list(reference_rows("edgetam_state_dict.tsv", "spatial_perceiver."))
    assert list(build_memory_encoder().state_dict()) == list(
        reference_rows("edgetam_state_dict.tsv", "memory_encoder."))


# ---------------------------------------------------------------- memory encoder

def test_memory_encoder_shapes_and_sigmoid():
    torch.manual_seed(0)
    enc = build_memory_encoder().eval()
    pix, masks = torch.randn(2, 256, 8, 8), torch.randn(2, 1, 128, 128)
    feats, pos = enc(pix, masks)
    assert feats.shape == (2, 64, 8, 8) and pos.shape == (2, 64, 8, 8)
    torch.testing.assert_close(pos, PositionEmbeddingSine(64)(feats))
    # skip_mask_sigmoid=True on sigmoid(masks) is the same as the default path
    feats2, _ = enc(pix, masks.sigmoid(), skip_mask_sigmoid=True)
    torch.testing.assert_close(feats, feats2)


def test_mask_downsampler_rejects_bad_stride():
    with pytest.raises(ValueError, match="power of stride"):
        MaskDownSampler(stride=3, total_stride=16)


def test_fuser_clones_are_independent():
    fuser = Fuser(CXBlock(8), 3)
    assert fuser.layers[0].dwconv.weight.data_ptr() != fuser.layers[1].dwconv.weight.data_ptr()


# ---------------------------------------------------------------- RoPE

def test_axial_table_values():
    """head_dim 4 -> one x pair rotated by x radians and one y pair rotated by y radians (row t = y·W + x)."""
    h, w = 3, 5
    table = axial_rope_table(4, h, w)
    assert table.shape == (h * w, 2, 2)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    torch.testing.assert_close(table[:, 0, 0], xs.flatten().cos())
    torch.testing.assert_close(table[:, 0, 1], xs.flatten().sin())
    torch.testing.assert_close(table[:, 1, 0], ys.flatten().cos())
    torch.testing.assert_close(table[:, 1, 1], ys.flatten().sin())


def test_rope_scores_depend_only_on_relative_position():
    """<R(p)q, R(p')k> depends on p - p' only, and rotation preserves norms."""
    torch.manual_seed(0)
    h, w, d = 6, 7, 16
    table = axial_rope_table(d, h, w)
    q, k = torch.randn(d), torch.randn(d)
    rq = apply_rope(q.expand(h * w, d), table).view(h, w, d)
    rk = apply_rope(k.expand(h * w, d), table).view(h, w, d)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(h, w))
    s1 = rq[1, 2] @ rk[3, 1]  # offset (-2, +1)
    s2 = rq[3, 5] @ rk[5, 4]
    assert torch.allclose(s1, s2, atol=1e-5)
    assert not torch.allclose(s1, rq[1, 2] @ rk[1, 2], atol=1e-3)  # a different offset gives a different score


def _identity_table(module: RoPEAttention):
    def table(height, width, device):
        t = torch.zeros(height * width, module.head_dim // 2, 2, device=device)
        t[..., 0] = 1.0
        return t
    return table


def test_zero_frequency_rope_equals_plain_attention():
    torch.manual_seed(0)
    attn = RoPEAttention(32, 2, kv_in_dim=16, k_sizes=(2, 2)).eval()
    q, k = torch.randn(2, 12, 32), torch.randn(2, 2 * 6 + 3, 16)
    v = torch.randn_like(k)
    rotated = attn(q, k, v, feat_size=(3, 4), num_k_exclude_rope=3, num_k_frames=2)
    attn.rope_table = _identity_table(attn)  # all angles 0: cos 1, sin 0
    plain = super(RoPEAttention, attn).forward(q, k, v)
    torch.testing.assert_close(attn(q, k, v, feat_size=(3, 4), num_k_exclude_rope=3, num_k_frames=2), plain)
    assert not torch.allclose(rotated, plain, atol=1e-4)


def _manual_rope_attention(attn: RoPEAttention, q, k, v, q_size, rotate_spans):
    """Reference: project, rotate q on q_size and the listed key spans [(start, end, (h, w))], attend."""
    heads = attn.num_heads
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q_proj(q)), split(attn.k_proj(k)).clone(), split(attn.v_proj(v))
    q = apply_rope(q, axial_rope_table(attn.head_dim, *q_size))
    for start, end, size in rotate_spans:
        k[:, :, start:end] = apply_rope(k[:, :, start:end], axial_rope_table(attn.head_dim, *size))
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def test_rope_key_rotation_query_grid_frames():
    """k_sizes=None: every frame rotated with the (non-square) query grid, trailing pointers not rotated."""
    torch.manual_seed(0)
    attn = RoPEAttention(32, 2, kv_in_dim=16).eval()
    hw = (3, 4)
    q, k = torch.randn(2, 12, 32), torch.randn(2, 2 * 12 + 5, 16)
    v = torch.randn_like(k)
    with torch.no_grad():
        ours = attn(q, k, v, feat_size=hw, num_k_exclude_rope=5, num_k_frames=2)
        ref = _manual_rope_attention(attn, q, k, v, hw, [(0, 12, hw), (12, 24, hw)])
    torch.testing.assert_close(ours, ref)


def test_rope_key_rotation_fixed_key_grid():
    """k_sizes=(2, 2): each frame = 3 unrotated (global) tokens + a rotated 2×2 grid; pointers not rotated."""
    torch.manual_seed(0)
    attn = RoPEAttention(32, 1, kv_in_dim=16, k_sizes=(2, 2)).eval()
    q, k = torch.randn(2, 6, 32), torch.randn(2, 3 * 7 + 2, 16)
    v = torch.randn_like(k)
    with torch.no_grad():
        ours = attn(q, k, v, feat_size=(2, 3), num_k_exclude_rope=2, num_k_frames=3)
        ref = _manual_rope_attention(attn, q, k, v, (2, 3), [(3, 7, (2, 2)), (10, 14, (2, 2)), (17, 21, (2, 2))])
    torch.testing.assert_close(ours, ref)


def test_rope_only_pointer_keys():
    """No frame tokens (all memory dropped): nothing to rotate, num_k_frames is not checked."""
    attn = RoPEAttention(32, 1, kv_in_dim=16, k_sizes=(2, 2)).eval()
    out = attn(torch.randn(1, 4, 32), torch.randn(1, 3, 16), torch.randn(1, 3, 16), feat_size=(2, 2),
               num_k_exclude_rope=3, num_k_frames=0)
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()


def test_rope_errors():
    attn = RoPEAttention(32, 1, kv_in_dim=16)
    q, k = torch.randn(1, 12, 32), torch.randn(1, 24, 16)
    with pytest.raises(ValueError, match="feat_size 4x4"):
        attn(q, k, k, feat_size=(4, 4), num_k_frames=2)
    with pytest.raises(ValueError, match="expected the query grid 3x4"):
        attn(q, k, k, feat_size=(3, 4), num_k_frames=1)
    with pytest.raises(ValueError, match="num_k_exclude_rope=30"):
        attn(q, k, k, feat_size=(3, 4), num_k_exclude_rope=30)
    with pytest.raises(ValueError, match="fewer than the k_sizes grid"):
        RoPEAttention(32, 1, kv_in_dim=16, k_sizes=(4, 4))(q, k, k, feat_size=(3, 4), num_k_frames=2)


def test_rope_table_made_under_inference_mode_trains():
    """A table first built under inference_mode is cached; later training must still backprop through it."""
    attn = RoPEAttention(16, 1)
    x = torch.randn(1, 35, 16)
    with torch.inference_mode():
        attn(x, x, x, feat_size=(5, 7))
    attn(x, x, x, feat_size=(5, 7)).sum().backward()
    assert attn.q_proj.weight.grad is not None


# ---------------------------------------------------------------- memory attention

def _memory_inputs(b, hw, frames, per_frame, ptr):
    h, w = hw
    return dict(curr=torch.randn(b, h * w, 256), curr_pos=torch.randn(b, h * w, 256),
                memory=torch.randn(b, frames * per_frame + ptr, 64),
                memory_pos=torch.randn(b, frames * per_frame + ptr, 64),
                feat_size=hw, num_obj_ptr_tokens=ptr, num_spatial_mem=frames)


def test_memory_attention_shapes():
    torch.manual_seed(0)
    edgetam = build_memory_attention(True).eval()
    out = edgetam(**_memory_inputs(2, (16, 16), frames=2, per_frame=512, ptr=8))
    assert out.shape == (2, 256, 256)
    sam21 = build_memory_attention(False).eval()
    out = sam21(**_memory_inputs(2, (8, 12), frames=3, per_frame=96, ptr=4))
    assert out.shape == (2, 96, 256)


def test_memory_attention_layers_are_clones():
    m = build_memory_attention(True)
    assert m.layers[0].linear1.weight.data_ptr() != m.layers[1].linear1.weight.data_ptr()
    torch.testing.assert_close(m.layers[0].linear1.weight, m.layers[1].linear1.weight)  # deep copies of one layer


# ---------------------------------------------------------------- perceiver

@pytest.mark.parametrize("size", [64, 32])
def test_perceiver_compresses_to_512_tokens(size):
    torch.manual_seed(0)
    perceiver = build_perceiver().eval()
    x, pos = torch.randn(2, 64, size, size), torch.randn(2, 64, size, size)
    with torch.no_grad():
        latents, latents_pos = perceiver(x, pos)
        latents_nopos, none_pos = perceiver(x, None)
    assert latents.shape == (2, 512, 64) and latents_pos.shape == (2, 512, 64)
    assert none_pos is None
    # QUIRK 1: global latents have an exactly zero position encoding; memory pos changes only the global latents
    assert torch.equal(latents_pos[:, :256], torch.zeros(2, 256, 64))
    assert not torch.allclose(latents[:, :256], latents_nopos[:, :256])
    torch.testing.assert_close(latents[:, 256:], latents_nopos[:, 256:], rtol=0, atol=0)
    # QUIRK 2: the 2D latents' pos is the sine encoding of the 16×16 latent grid
    grid_pos = PositionEmbeddingSine(64)(torch.zeros(1, 64, 16, 16)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(latents_pos[:, 256:], grid_pos.expand(2, -1, -1))


def test_perceiver_pos_enc_flag_has_no_effect():
    torch.manual_seed(0)
    a = build_perceiver().eval()
    b = SpatialPerceiver(dim=64, depth=2, position_encoding=PositionEmbeddingSine(64), use_self_attn=True,
                         pos_enc_at_key_value=False).eval()
    b.load_state_dict(a.state_dict())
    x, pos = torch.randn(1, 64, 32, 32), torch.randn(1, 64, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x, pos)[0], b(x, pos)[0], rtol=0, atol=0)


def test_perceiver_2d_latents_are_local():
    """Changing one 2×2 window of a 32×32 memory changes only that window's 2D latent (and the global ones)."""
    torch.manual_seed(0)
    perceiver = build_perceiver().eval()
    x = torch.randn(1, 64, 32, 32)
    x2 = x.clone()
    x2[:, :, 4:6, 10:12] += 1.0  # window (row 2, col 5) -> 2D latent 2·16 + 5
    with torch.no_grad():
        a, _ = perceiver(x, None)
        b, _ = perceiver(x2, None)
    changed = ((a - b).abs().amax(-1) > 0)[0, 256:].nonzero().flatten().tolist()
    assert changed == [2 * 16 + 5]


def test_perceiver_single_token_self_attention_shortcut_is_exact():
    """The 1-token self-attention shortcut equals real attention over one token."""
    torch.manual_seed(0)
    sa = build_perceiver().layers[0].self_attn.eval()
    x = torch.randn(8, 1, 64)
    fast = sa(x)
    y = sa.norm(x)
    q, (k, v) = sa.to_q(y), sa.to_kv(y).chunk(2, dim=-1)
    slow = sa.to_out(F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0])
    torch.testing.assert_close(fast, slow)


def test_perceiver_rejects_indivisible_memory():
    with pytest.raises(ValueError, match="16x16 windows"):
        build_perceiver()(torch.randn(1, 64, 24, 20), None)


# ---------------------------------------------------------------- gradients

def test_gradients_flow_through_memory_path():
    """memory encoder -> perceiver -> memory attention: every parameter gets a finite gradient."""
    torch.manual_seed(0)
    enc, perceiver, attn = build_memory_encoder(), build_perceiver(), build_memory_attention(True)
    for m in (enc, perceiver, attn):
        m.train()
    b, hw = 2, (16, 16)
    feats, pos = enc(torch.randn(b, 256, *hw), torch.randn(b, 1, 256, 256))
    memory, memory_pos = perceiver(feats, pos)  # (B, 512, 64)
    ptr = torch.randn(b, 4, 64, requires_grad=True)
    memory = torch.cat((memory, memory, ptr), dim=1)
    memory_pos = torch.cat((memory_pos, memory_pos, torch.zeros(b, 4, 64)), dim=1)
    curr = torch.randn(b, 256, 256, requires_grad=True)
    out = attn(curr, torch.randn(b, 256, 256), memory, memory_pos, feat_size=hw, num_obj_ptr_tokens=4,
               num_spatial_mem=2)
    out.square().mean().backward()
    for module in (enc, perceiver, attn):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert curr.grad.abs().sum() > 0 and ptr.grad.abs().sum() > 0
    assert math.isfinite(out.sum().item())
