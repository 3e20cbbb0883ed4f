"""EdgeTAM's 2D Spatial Perceiver: compresses one frame's (B, C, H, W) memory into a fixed set of latent tokens.

Two groups of learned latents read the same memory with the same layers:

- global (1D) latents cross-attend to all H·W memory tokens;
- 2D latents: the memory is split into a g×g grid of windows (g² = ``num_latents_2d``, 16×16 in EdgeTAM) and each
  latent cross-attends only to its own window, so the 2D latents keep the spatial layout (a g×g latent map).

With EdgeTAM's 256 + 256 latents a 64×64 memory frame (1024 px input) becomes 512 tokens, and so does a 32×32 one
(512 px input, windows of 2×2). Key names follow the official checkpoint (``spatial_perceiver.*``).

The official implementation has two quirks that change outputs; both are reproduced here and marked "QUIRK".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Sequential):
    """Pre-norm MLP without biases: LayerNorm -> Linear(dim, mult·dim) -> GELU -> Linear(mult·dim, dim).

    Children are numbered 0..3 as in the checkpoint (``ff.0`` norm, ``ff.1`` / ``ff.3`` linears).
    Input and output (..., dim).
    """

    def __init__(self, dim: int, mult: float = 4) -> None:
        hidden = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, dim, bias=False))


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, heads·d) -> (B, heads, N, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads·d)."""
    return x.transpose(1, 2).flatten(2)


class PerceiverCrossAttention(nn.Module):
    """Latents attend to input tokens (norm both, q from latents, k/v from inputs).

    Args:
        dim: token width of latents and inputs.
        dim_head: per-head width; heads·dim_head is the inner width.
        heads: number of heads.
        dropout_p: attention-probability dropout (training only).
        concat_kv_latents: also attend to the (normed) latents themselves (keys/values = [inputs, latents]).

    ``forward(latents (B, L, dim), x (B, N, dim), pos (B, N, dim) | None) -> (B, L, dim)``. When ``pos`` is given it
    is added to both keys and values after projection (requires heads·dim_head == dim, as in EdgeTAM).
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, dropout_p: float = 0.05,
                 concat_kv_latents: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.inner_dim = dim_head * heads
        self.dropout_p = dropout_p
        self.concat_kv_latents = concat_kv_latents
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, self.inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * self.inner_dim, bias=False)
        self.to_out = nn.Linear(self.inner_dim, dim, bias=False)

    def forward(self, latents: Tensor, x: Tensor, pos: Tensor | None = None) -> Tensor:
        latents = self.norm_latents(latents)
        x = self.norm_x(x)
        kv_in = torch.cat((x, latents), dim=1) if self.concat_kv_latents else x
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(kv_in).chunk(2, dim=-1))
        if pos is not None:
            if self.concat_kv_latents:
                raise ValueError("PerceiverCrossAttention: pos is not supported with concat_kv_latents=True")
            pos = _split_heads(pos, self.heads)
            k, v = k + pos, v + pos
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        return self.to_out(_merge_heads(out))


class PerceiverSelfAttention(nn.Module):
    """Pre-norm self-attention among latents, no biases.

    ``forward(x (B, L, dim)) -> (B, L, dim)`` (the residual is added by the caller).
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, dropout_p: float = 0.05) -> None:
        super().__init__()
        self.heads = heads
        self.inner_dim = dim_head * heads
        self.dropout_p = dropout_p
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, self.inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * self.inner_dim, bias=False)
        self.to_out = nn.Linear(self.inner_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        dropout_p = self.dropout_p if self.training else 0.0
        if x.shape[1] == 1 and dropout_p == 0.0:
            # A single token attends only to itself: its softmax weight is exactly 1, so the output is its value
            # projection. Skipping q/k is a pure speed-up with identical numerics (the 2D path, see QUIRK 2 below).
            v = F.linear(x, self.to_kv.weight[self.inner_dim:])
            return self.to_out(v)
        q = _split_heads(self.to_q(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(x).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.to_out(_merge_heads(out))


class PerceiverLayer(nn.Module):
    """One perceiver layer: cross-attention + FFN, then optionally self-attention + FFN, all residual.

    ``forward(latents (B, L, dim), x (B, N, dim), pos (B, N, dim) | None) -> (B, L, dim)``.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, ff_mult: float = 4,
                 hidden_dropout_p: float = 0.0, attention_dropout_p: float = 0.0, concat_kv_latents: bool = False,
                 use_self_attn: bool = False) -> None:
        super().__init__()
        self.attn = PerceiverCrossAttention(dim, dim_head, heads, attention_dropout_p, concat_kv_latents)
        self.ff = FeedForward(dim, ff_mult)
        self.dropout = nn.Dropout(hidden_dropout_p)
        self.use_self_attn = use_self_attn
        if use_self_attn:
            self.self_attn = PerceiverSelfAttention(dim, dim_head, heads, attention_dropout_p)
            self.self_ff = FeedForward(dim, ff_mult)

    def forward(self, latents: Tensor, x: Tensor, pos: Tensor | None = None) -> Tensor:
        latents = self.dropout(self.attn(latents, x, pos) + latents)  # dropout after the residual, as official
        latents = self.ff(latents) + latents
        if self.use_self_attn:
            latents = self.self_attn(latents) + latents
            latents = self.self_ff(latents) + latents
        return latents


class SpatialPerceiver(nn.Module):
    """EdgeTAM 2D Spatial Perceiver (official ``PerceiverResampler``).

    Args:
        dim: memory channels (64).
        depth: number of :class:`PerceiverLayer` (shared by the global and the 2D path).
        dim_head, heads: attention shape; heads·dim_head must equal ``dim`` when ``pos`` is used.
        num_latents: global latents (0 disables the global path).
        num_latents_2d: 2D latents, a perfect square g² (0 disables the 2D path).
        ff_mult: FFN expansion.
        hidden_dropout_p, attention_dropout_p: dropout rates.
        pos_enc_at_key_value: accepted for config compatibility; has NO effect (QUIRK 1).
        concat_kv_latents: cross-attention also attends to the latents.
        position_encoding: module mapping (B, C, g, g) -> (B, C, g, g) sine encoding, for the 2D latents' positions.
        use_self_attn: add latent self-attention + FFN to every layer.

    ``forward(x (B, dim, H, W), pos (B, dim, H, W) | None) -> (latents (B, L, dim), pos (B, L, dim) | None)`` with
    L = num_latents + num_latents_2d, global latents first. The returned pos is None iff the given pos is None.
    """

    def __init__(self, dim: int, depth: int, dim_head: int = 64, heads: int = 1, num_latents: int = 256,
                 num_latents_2d: int = 256, ff_mult: float = 4, hidden_dropout_p: float = 0.0,
                 attention_dropout_p: float = 0.0, pos_enc_at_key_value: bool = True,
                 concat_kv_latents: bool = False, position_encoding: nn.Module | None = None,
                 use_self_attn: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.num_latents = max(num_latents, 0)
        self.num_latents_2d = max(num_latents_2d, 0)
        self.grid_2d = round(self.num_latents_2d ** 0.5)
        if self.grid_2d ** 2 != self.num_latents_2d:
            raise ValueError(f"SpatialPerceiver: num_latents_2d must be a perfect square, got {num_latents_2d}")
        if self.num_latents + self.num_latents_2d == 0:
            raise ValueError("SpatialPerceiver: num_latents and num_latents_2d are both 0")
        if self.num_latents_2d and position_encoding is None:
            raise ValueError("SpatialPerceiver: the 2D latents need a position_encoding module")
        if self.num_latents:
            self.latents = nn.Parameter(torch.randn(self.num_latents, dim))
        if self.num_latents_2d:
            self.latents_2d = nn.Parameter(torch.randn(self.num_latents_2d, dim))
        self.position_encoding = position_encoding
        # QUIRK 1 (official): stored but never read; see forward_global.
        self.pos_enc_at_key_value = pos_enc_at_key_value
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, dim_head, heads, ff_mult, hidden_dropout_p, attention_dropout_p, concat_kv_latents,
                           use_self_attn)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        latents, latents_pos = [], []
        if self.num_latents:
            lat, lat_pos = self.forward_global(x, pos)
            latents.append(lat)
            latents_pos.append(lat_pos)
        if self.num_latents_2d:
            lat, lat_pos = self.forward_2d(x)
            latents.append(lat)
            latents_pos.append(lat_pos)
        out_pos = torch.cat(latents_pos, dim=1) if pos is not None else None
        return torch.cat(latents, dim=1), out_pos

    def forward_global(self, x: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """Global latents over all tokens: (B, C, H, W), pos | None -> (B, num_latents, C) and a zero pos."""
        b = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        # QUIRK 1 (official): `pos_enc_at_key_value` has no effect. Whenever a memory position encoding is given it
        # is added to the keys AND the values of the cross-attention, whatever the flag says.
        tokens_pos = pos.flatten(2).transpose(1, 2) if pos is not None else None
        latents = self.latents[None].expand(b, -1, -1)
        for layer in self.layers:
            latents = layer(latents, tokens, tokens_pos)
        # QUIRK 1 (official, continued): the global latents get an all-zero position encoding.
        return self.norm(latents), torch.zeros_like(latents)

    def forward_2d(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Window latents: (B, C, H, W) -> (B, g², C) in row-major window order, and their sine pos (B, g², C).

        The memory is split into g×g windows of (H/g)×(W/g) tokens; latent i (row i // g, column i % g) attends
        to its window only, without position encoding.
        """
        b, c, h, w = x.shape
        g = self.grid_2d
        if h % g or w % g:
            raise ValueError(f"SpatialPerceiver: memory {h}x{w} is not divisible into {g}x{g} windows")
        wh, ww = h // g, w // g
        # (B, C, g, wh, g, ww) -> (B, g, g, wh, ww, C) -> (B·g², wh·ww, C)
        windows = x.view(b, c, g, wh, g, ww).permute(0, 2, 4, 3, 5, 1).reshape(b * g * g, wh * ww, c)
        # QUIRK 2 (official): every window's latent is a sequence of ONE token, so the layers' latent
        # self-attention runs on a single token (its output is the value projection; PerceiverSelfAttention
        # short-cuts that exactly).
        latents = self.latents_2d[None].expand(b, -1, -1).reshape(b * g * g, 1, c)
        for layer in self.layers:
            latents = layer(latents, windows)
        latents = latents.view(b, g, g, c)
        # QUIRK 2 (official, continued): the 2D latents' position encoding is the sine encoding of the g×g grid.
        pos = self.position_encoding(latents.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.norm(latents.flatten(1, 2)), pos
