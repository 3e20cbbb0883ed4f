"""SAM heads: PromptEncoder, TwoWayTransformer / Attention, MaskDecoder (edgetam_train.models).

Checks: state_dict keys and shapes equal the ``sam_prompt_encoder.`` / ``sam_mask_decoder.`` rows of the official
layout (shared/reference/edgetam_state_dict.tsv), output shapes, point-label semantics (padding, box corners, bad
labels), the dynamic-multimask fallback, export tracing, and numerics against transformers' EdgeTAM prompt encoder
and mask decoder loaded with the same weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgetam_train.models.common import MLP, LayerNorm2d
from edgetam_train.models.mask_decoder import MaskDecoder
from edgetam_train.models.prompt_encoder import PromptEncoder
from edgetam_train.models.two_way_transformer import Attention, TwoWayTransformer
from tests.helpers.reference import read_layout

C = 256
DECODER_KW = dict(use_high_res_features=True, iou_prediction_use_sigmoid=True, pred_obj_scores=True,
                  pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True)


def make_decoder(**overrides) -> MaskDecoder:
    """The official SAM 2.1 / EdgeTAM decoder configuration (``sam2_base._build_sam_heads``)."""
    kw = {**DECODER_KW, **overrides}
    transformer = TwoWayTransformer(depth=2, embedding_dim=C, num_heads=8, mlp_dim=2048)
    return MaskDecoder(C, transformer, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, **kw)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every tensor so that embeddings/biases are non-zero and LayerNorm affines non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in module.state_dict().values():
            if v.is_floating_point():
                v.add_(scale * torch.randn(v.shape, generator=g))
    return module


def layout(prefix: str) -> dict[str, tuple[int, ...]]:
    """{key without prefix: shape} of the official EdgeTAM rows starting with ``prefix``."""
    return {k[len(prefix):]: shape for k, (shape, _) in read_layout("edgetam").items() if k.startswith(prefix)}


def assert_layout(module: torch.nn.Module, prefix: str) -> None:
    want = layout(prefix)
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert want, f"no {prefix} rows in the reference layout"
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing} unexpected {unexpected}"
    assert got == want
    assert list(got) == list(want), "state_dict order differs from the official one"


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    g = 16  # 256 px input keeps the test fast
    pe = randomize(PromptEncoder(C, (g, g), (16 * g, 16 * g), 16), seed=1, scale=0.5).eval()
    dec = randomize(make_decoder(dynamic_multimask_via_stability=True), seed=2).eval()
    return g, pe, dec


def decoder_inputs(g: int, b: int = 2, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(b, C, g, g, generator=gen)
    high_res = [torch.randn(b, C // 8, 4 * g, 4 * g, generator=gen),
                torch.randn(b, C // 4, 2 * g, 2 * g, generator=gen)]
    return img, high_res


# --------------------------------------------------------------------------------------------- layouts
def test_prompt_encoder_layout_matches_official():
    pe = PromptEncoder(256, (64, 64), (1024, 1024), 16)
    assert_layout(pe, "sam_prompt_encoder.")
    assert "pe_layer.positional_encoding_gaussian_matrix" in dict(pe.named_buffers())
    assert pe.mask_input_size == (256, 256)
    assert pe.get_dense_pe().shape == (1, 256, 64, 64)


def test_mask_decoder_layout_matches_official():
    assert_layout(make_decoder(), "sam_mask_decoder.")


def test_mask_decoder_optional_heads():
    dec = MaskDecoder(C, TwoWayTransformer(2, C, 8, 2048))
    keys = set(dec.state_dict())
    assert not any(k.startswith(("conv_s0", "conv_s1", "obj_score_token", "pred_obj_score_head")) for k in keys)
    linear = make_decoder(pred_obj_scores_mlp=False)
    assert isinstance(linear.pred_obj_score_head, torch.nn.Linear)


# --------------------------------------------------------------------------------------------- prompt encoder
def test_prompt_encoder_shapes_and_padding(heads):
    g, pe, _ = heads
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]], [[50.0, 60.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    boxes = torch.tensor([[1.0, 2.0, 100.0, 120.0], [5.0, 6.0, 70.0, 80.0]])
    not_a_point = pe.not_a_point_embed.weight[0]

    sparse, dense = pe((coords, labels), None, None)
    assert sparse.shape == (2, 3, C) and dense.shape == (2, C, g, g)  # N + 1 padding token without boxes
    torch.testing.assert_close(sparse[:, 2], not_a_point.expand(2, C), rtol=0, atol=0)  # appended pad token
    torch.testing.assert_close(sparse[1, 1], not_a_point, rtol=0, atol=0)  # label -1 -> not-a-point only
    torch.testing.assert_close(dense, pe.no_mask_embed.weight.reshape(1, C, 1, 1).expand(2, C, g, g), rtol=0, atol=0)
    # a padded point's coordinates do not matter
    moved = coords.clone()
    moved[1, 1] = torch.tensor([123.0, 45.0])
    torch.testing.assert_close(pe((moved, labels), None, None)[0], sparse, rtol=0, atol=0)
    # label k: PE(xy + 0.5) + point_embeddings[k]
    pos = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
    torch.testing.assert_close(sparse[0, 0], pos[0, 0] + pe.point_embeddings[1].weight[0], rtol=0, atol=0)
    torch.testing.assert_close(sparse[0, 1], pos[0, 1] + pe.point_embeddings[0].weight[0], rtol=0, atol=0)

    with_box, _ = pe((coords, labels), boxes, None)
    assert with_box.shape == (2, 4, C)  # points (no pad) + 2 corners
    torch.testing.assert_close(with_box[:, :2], sparse[:, :2], rtol=0, atol=0)
    box_only, _ = pe(None, boxes, None)
    assert box_only.shape == (2, 2, C)
    torch.testing.assert_close(box_only, with_box[:, 2:], rtol=0, atol=0)
    # box corners == points labelled 2 / 3 at the corners
    corners = boxes.reshape(2, 2, 2)
    as_points, _ = pe((corners, torch.tensor([[2, 3], [2, 3]])), None, None)
    torch.testing.assert_close(box_only, as_points[:, :2], rtol=0, atol=1e-5)  # matmul over 2 vs 3 points

    mask = torch.randn(2, 1, 4 * g, 4 * g)
    none_sparse, mask_dense = pe(None, None, mask)
    assert none_sparse.shape == (2, 0, C) and mask_dense.shape == (2, C, g, g)
    assert pe(None, None, None)[1].shape == (1, C, g, g)
    with pytest.raises(ValueError, match="mask prompt"):
        pe(None, None, torch.randn(2, 1, 2 * g, 2 * g))


@pytest.mark.parametrize("bad", [5, -2, 4, 0.5])
def test_bad_point_label_raises_naming_it(heads, bad):
    _, pe, _ = heads
    dtype = torch.float32 if isinstance(bad, float) else torch.int64
    labels = torch.tensor([[1, bad]], dtype=dtype)
    with pytest.raises(ValueError, match=f"point label {bad:g} "):
        pe((torch.zeros(1, 2, 2), labels), None, None)


def test_prompt_encoder_exports_without_data_dependent_checks(heads):
    _, pe, _ = heads

    class Points(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pe = pe

        def forward(self, coords, labels):
            return self.pe((coords, labels), None, None)[0]

    coords = torch.rand(2, 3, 2) * 256
    labels = torch.tensor([[1, 0, -1], [2, 3, 1]])
    program = torch.export.export(Points(), (coords, labels))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("nonzero" in t or "masked" in t or "_local_scalar_dense" in t for t in targets), targets
    torch.testing.assert_close(program.module()(coords, labels), Points()(coords, labels), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("multimask_token", [True, False])
def test_mask_decoder_output_shapes(heads, multimask, multimask_token):
    g, pe, dec = heads
    dec.use_multimask_token_for_obj_ptr = multimask_token
    try:
        img, high_res = decoder_inputs(g)
        sparse, dense = pe((torch.rand(2, 2, 2) * 256, torch.tensor([[1, 0], [1, 1]])), None, None)
        masks, iou, tokens, obj = dec(img, pe.get_dense_pe(), sparse, dense, multimask, False, high_res)
    finally:
        dec.use_multimask_token_for_obj_ptr = True
    m = 3 if multimask else 1
    assert masks.shape == (2, m, 4 * g, 4 * g) and iou.shape == (2, m) and obj.shape == (2, 1)
    assert tokens.shape == (2, 3 if multimask and multimask_token else 1, C)
    assert ((iou >= 0) & (iou <= 1)).all()  # sigmoid IoU head


def test_mask_decoder_repeat_image_and_errors(heads):
    g, pe, dec = heads
    img, high_res = decoder_inputs(g)
    sparse, dense = pe((torch.rand(2, 1, 2) * 256, torch.tensor([[1], [0]])), None, None)
    one = [h[:1] for h in high_res]
    repeated = dec(img[:1], pe.get_dense_pe(), sparse, dense, True, True, one)
    explicit = dec(img[:1].expand(2, -1, -1, -1), pe.get_dense_pe(), sparse, dense, True, False, one)
    for a, b in zip(repeated, explicit):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="repeat_image"):
        dec(img[:1], pe.get_dense_pe(), sparse, dense, True, False, one)
    with pytest.raises(ValueError, match="high_res_features"):
        dec(img, pe.get_dense_pe(), sparse, dense, True, False, None)


def test_no_object_head_gives_constant_score():
    dec = MaskDecoder(C, TwoWayTransformer(2, C, 8, 2048)).eval()
    out = dec(torch.randn(1, C, 8, 8), torch.randn(1, C, 8, 8), torch.randn(1, 2, C), torch.zeros(1, C, 8, 8),
              False, False)
    assert out[0].shape == (1, 1, 32, 32)
    torch.testing.assert_close(out[3], torch.full((1, 1), 10.0))


def test_dynamic_multimask_fallback(heads):
    _, _, dec = heads
    logits = torch.randn(3, 4, 8, 8) * 5
    logits[0, 0] = 10.0  # stable single mask -> kept
    logits[1, 0] = torch.linspace(-1, 1, 64).reshape(8, 8)  # unstable -> best-IoU candidate
    logits[2, 0] = -10.0  # empty union counts as stable
    ious = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.9], [0.5, 0.9, 0.1, 0.1]])
    masks, scores = dec._dynamic_multimask_via_stability(logits, ious)
    assert masks.shape == (3, 1, 8, 8) and scores.shape == (3, 1)
    torch.testing.assert_close(masks[:, 0], torch.stack((logits[0, 0], logits[1, 3], logits[2, 0])), rtol=0, atol=0)
    torch.testing.assert_close(scores[:, 0], torch.tensor([0.1, 0.9, 0.5]), rtol=0, atol=0)
    # only with single-mask output and dynamic_multimask (the inference rules, models/step_rules.py), in train() or
    # eval() alike; the training rules (dynamic_multimask=False) always return token 0
    g = 4
    args = (torch.randn(2, C, g, g), torch.randn(1, C, g, g), torch.randn(2, 2, C), torch.randn(2, C, g, g))
    high_res = [torch.randn(2, C // 8, 4 * g, 4 * g), torch.randn(2, C // 4, 2 * g, 2 * g)]
    all_masks, all_ious, *_ = dec.predict_masks(*args, False, high_res)
    masks, ious, tokens, _ = dec(*args, False, False, high_res, dynamic_multimask=False)
    torch.testing.assert_close(masks, all_masks[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(ious, all_ious[:, :1], rtol=0, atol=0)
    dynamic, _ = dec._dynamic_multimask_via_stability(all_masks, all_ious)
    dec.train()
    try:
        masks, *_ = dec(*args, False, False, high_res, dynamic_multimask=True)
    finally:
        dec.eval()
    torch.testing.assert_close(masks, dynamic, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- building blocks
def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4, downsample_rate=2, kv_in_dim=32).eval()
    assert attn.internal_dim == 32 and attn.num_heads == 4 and attn.dropout_p == 0.0
    q, k = torch.randn(2, 5, 64), torch.randn(2, 7, 32)
    out = attn(q, k, k)
    qh = attn.q_proj(q).reshape(2, 5, 4, 8).transpose(1, 2)
    kh = attn.k_proj(k).reshape(2, 7, 4, 8).transpose(1, 2)
    vh = attn.v_proj(k).reshape(2, 7, 4, 8).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(8), dim=-1)
    want = attn.out_proj((w @ vh).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_heads"):
        Attention(64, num_heads=6)


def test_mlp_and_layernorm2d():
    mlp = MLP(8, 16, 3, 3, sigmoid_output=True)
    assert [tuple(v.shape) for v in mlp.state_dict().values()] == [(16, 8), (16,), (16, 16), (16,), (3, 16), (3,)]
    x = torch.randn(4, 8)
    want = torch.sigmoid(mlp.layers[2](F.relu(mlp.layers[1](F.relu(mlp.layers[0](x))))))
    torch.testing.assert_close(mlp(x), want, rtol=0, atol=0)
    ln = randomize(LayerNorm2d(6), scale=1.0)
    x = torch.randn(2, 6, 3, 5)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- transformers parity
def test_matches_transformers_edgetam_heads(heads):
    pytest.importorskip("transformers")
    from transformers.models.edgetam.modeling_edgetam import EdgeTamMaskDecoder, EdgeTamPromptEncoder

    from edgetam_train.export.hf_config import hf_config
    from edgetam_train.export.hf_convert import official_to_hf

    g, pe, dec = heads
    official = {**{f"sam_prompt_encoder.{k}": v for k, v in pe.state_dict().items()},
                **{f"sam_mask_decoder.{k}": v for k, v in dec.state_dict().items()}}
    hf_sd = official_to_hf(official, "edgetam", target="image")
    config = hf_config("edgetam", image_size=16 * g, target="image")
    config.mask_decoder_config._attn_implementation = "sdpa"
    hf_pe, hf_dec = EdgeTamPromptEncoder(config.prompt_encoder_config), EdgeTamMaskDecoder(config.mask_decoder_config)
    for module, prefix in ((hf_pe, "prompt_encoder."), (hf_dec, "mask_decoder.")):
        module.load_state_dict({k[len(prefix):]: v for k, v in hf_sd.items() if k.startswith(prefix)}, strict=True)
        module.eval()

    img, high_res = decoder_inputs(g)
    coords = torch.tensor([[[30.0, 40.0], [100.0, 90.0], [7.0, 200.0]], [[128.0, 128.0], [60.0, 10.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, 1], [1, 1, -1]])
    boxes = torch.tensor([[10.0, 20.0, 200.0, 220.0], [5.0, 5.0, 100.0, 60.0]])
    mask = torch.randn(2, 1, 4 * g, 4 * g)
    with torch.no_grad():
        # transformers' box embedding appends a not-a-point token after the two corners (the official one does not);
        # the corner tokens themselves agree.
        ours_box, _ = pe(None, boxes, None)
        hf_box, _ = hf_pe(None, None, boxes[:, None], None)
        torch.testing.assert_close(ours_box, hf_box[:, 0, :2], rtol=0, atol=1e-6)
        for masks_in in (None, mask):
            sparse, dense = pe((coords, labels), None, masks_in)
            hf_sparse, hf_dense = hf_pe(coords[:, None], labels[:, None], None, masks_in)
            torch.testing.assert_close(sparse, hf_sparse[:, 0], rtol=0, atol=1e-6)
            torch.testing.assert_close(dense, hf_dense, rtol=0, atol=1e-5)  # their LayerNorm rounds differently
            for multimask in (True, False):  # False exercises the dynamic-stability fallback
                ours = dec(img, pe.get_dense_pe(), sparse, dense, multimask, False, high_res)
                theirs = hf_dec(img, pe.get_dense_pe().expand(2, -1, -1, -1), hf_sparse, hf_dense, multimask, high_res)
                for a, b in zip(ours, theirs):
                    torch.testing.assert_close(a, b.reshape(a.shape), rtol=1e-5, atol=2e-5)
