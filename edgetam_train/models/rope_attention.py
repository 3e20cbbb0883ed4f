"""Attention with 2D axial rotary position encoding (RoPE), as used by SAM 2 / EdgeTAM memory attention.

A head of width C is read as C/2 consecutive pairs (x[2i], x[2i+1]) = complex numbers. For a token at grid column x
and row y, the first C/4 pairs are rotated by angles x·f_j and the last C/4 pairs by y·f_j, with
f_j = theta^(-4j/C), j = 0..C/4-1 (official ``compute_axial_cis``). Tokens are numbered row-major: t = y·W + x.

Tables are stored as real tensors (N, C/2, 2) holding (cos, sin) — ``torch.view_as_real`` of the complex
``cis`` table — and applied with real arithmetic, which also keeps the module exportable (ONNX has no complex type).

One class, :class:`RoPEAttention`, covers the three official uses (see its docstring).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from edgetam_train.models.two_way_transformer import Attention


def axial_rope_table(head_dim: int, height: int, width: int, theta: float = 10000.0) -> Tensor:
    """Axial 2D RoPE table of a height×width grid: (height·width, head_dim/2, 2) float32 (cos, sin), on CPU.

    Row t = y·width + x; pairs 0..head_dim/4-1 rotate with x, the rest with y. ``head_dim`` must be divisible by 4.
    """
    if head_dim % 4:
        raise ValueError(f"axial_rope_table: head_dim must be divisible by 4, got {head_dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(height * width, dtype=torch.float32)
    t_x = t % width
    t_y = torch.div(t, width, rounding_mode="floor")
    angles = torch.cat((torch.outer(t_x, freqs), torch.outer(t_y, freqs)), dim=-1)  # (N, head_dim/2)
    # torch.polar (not angles.cos()/.sin()) so the table is bit-identical to the official complex one.
    return torch.view_as_real(torch.polar(torch.ones_like(angles), angles)).clone()


@lru_cache(maxsize=64)
def _cached_table(head_dim: int, height: int, width: int, theta: float, device: torch.device) -> Tensor:
    """:func:`axial_rope_table` moved to ``device``, memoised per (head_dim, grid, theta, device)."""
    # Built outside inference mode / autograd so a table first made under torch.inference_mode() can later be used
    # in training (an inference tensor cannot be saved for backward).
    with torch.inference_mode(False), torch.no_grad():
        return axial_rope_table(head_dim, height, width, theta).to(device)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate x (..., N, C) by table (N, C/2, 2) of (cos, sin); math in float32, result in x's dtype.

    The table broadcasts over all leading dims of x (batch, heads, frames).
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x_re, x_im = xf[..., 0], xf[..., 1]
    cos, sin = table[..., 0], table[..., 1]
    out = torch.stack((x_re * cos - x_im * sin, x_re * sin + x_im * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class RoPEAttention(Attention):
    """Multi-head attention whose queries and (some) keys are rotated by 2D axial RoPE.

    Args:
        embedding_dim, num_heads, downsample_rate, dropout, kv_in_dim: as :class:`Attention` (q/k/v/out projections).
        rope_theta: RoPE frequency base.
        k_sizes: None, or a fixed (height, width) grid for the rotated part of each key frame (see case c).

    ``forward(q (B, Nq, D), k (B, Nk, Dkv), v (B, Nk, Dkv), feat_size=(H, W), num_k_exclude_rope=0,
    num_k_frames=1) -> (B, Nq, D)``. Queries must be the H×W grid (Nq = H·W, row-major) and are always rotated
    with the H×W table. The keys are read as ``[frame_0, ..., frame_{F-1}, excluded]`` with F = ``num_k_frames``
    and ``excluded`` = the last ``num_k_exclude_rope`` tokens (object pointers), which are never rotated. Let
    R = Nk - num_k_exclude_rope (the frame tokens); which of them are rotated:

    - ``k_sizes=None`` (cases a and b): every frame is an H×W grid like the query (R = F·H·W, checked) and all R
      tokens are rotated, each frame with the query's table.
      (a) self-attention (official ``RoPEAttention``): k = q tokens, F = 1, nothing excluded.
      (b) SAM 2.1 memory cross-attention (official ``RoPEAttention(rope_k_repeat=True)``): F memory frames of
          H×W tokens each, then the object-pointer tokens (excluded).
    - ``k_sizes=(h, w)`` (case c, EdgeTAM memory cross-attention, official ``RoPEAttentionv2``): each frame has
      R/F tokens (checked divisible); its first R/F - h·w tokens are NOT rotated (EdgeTAM: the 256 global perceiver
      latents) and its last h·w tokens are rotated with the h×w table (EdgeTAM: the 16×16 2D latents). If
      R/F == h·w the whole frame is rotated. Trailing object-pointer tokens are excluded as above.

    If R == 0 (no key tokens at all, e.g. all memory dropped, or only excluded tokens) nothing is rotated and
    ``num_k_frames`` is not checked.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, dropout: float = 0.0,
                 kv_in_dim: int | None = None, rope_theta: float = 10000.0,
                 k_sizes: tuple[int, int] | None = None) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate=downsample_rate, dropout=dropout,
                         kv_in_dim=kv_in_dim)
        self.head_dim = self.internal_dim // num_heads
        if self.head_dim % 4:
            raise ValueError(f"RoPEAttention: per-head width must be divisible by 4, got {self.head_dim}")
        self.rope_theta = float(rope_theta)
        self.k_sizes = None if k_sizes is None else (int(k_sizes[0]), int(k_sizes[1]))

    def rope_table(self, height: int, width: int, device: torch.device) -> Tensor:
        """Cached (height·width, head_dim/2, 2) table of this module's head width and theta on ``device``."""
        return _cached_table(self.head_dim, int(height), int(width), self.rope_theta, torch.device(device))

    def _rotate_keys(self, k: Tensor, feat_size: tuple[int, int], num_frames: int) -> Tensor:
        """Rotate the frame tokens k (B, heads, R, d) as described in the class docstring."""
        b, nh, r, d = k.shape
        if num_frames <= 0 or r % num_frames:
            raise ValueError(f"RoPEAttention: {r} rotary key tokens do not split into num_k_frames={num_frames}")
        per_frame = r // num_frames
        height, width = self.k_sizes if self.k_sizes is not None else feat_size
        n_rot = height * width
        if self.k_sizes is None and per_frame != n_rot:
            raise ValueError(f"RoPEAttention: each of the {num_frames} key frames has {per_frame} tokens, expected "
                             f"the query grid {height}x{width} = {n_rot}")
        if per_frame < n_rot:
            raise ValueError(f"RoPEAttention: each of the {num_frames} key frames has {per_frame} tokens, fewer than "
                             f"the k_sizes grid {height}x{width} = {n_rot}")
        table = self.rope_table(height, width, k.device)
        # (B·heads·F, per_frame, d): rank 3, so the rotation's pair axis makes rank 4 (Core ML converts rank <= 5)
        frames = k.reshape(b * nh * num_frames, per_frame, d)
        n_plain = per_frame - n_rot
        rotated = apply_rope(frames[:, n_plain:], table)
        if n_plain:
            rotated = torch.cat((frames[:, :n_plain], rotated), dim=1)
        return rotated.reshape(b, nh, r, d)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, feat_size: tuple[int, int], num_k_exclude_rope: int = 0,
                num_k_frames: int = 1) -> Tensor:
        height, width = int(feat_size[0]), int(feat_size[1])
        if q.shape[1] != height * width:
            raise ValueError(f"RoPEAttention: {q.shape[1]} query tokens but feat_size {height}x{width}")
        num_rope_k = k.shape[1] - num_k_exclude_rope
        if num_rope_k < 0:
            raise ValueError(f"RoPEAttention: num_k_exclude_rope={num_k_exclude_rope} > {k.shape[1]} key tokens")
        q, k, v = self.project(q, k, v)  # (B, heads, N, d)
        q = apply_rope(q, self.rope_table(height, width, q.device))
        if num_rope_k > 0:  # no frame tokens at all (dropped memory): nothing to rotate
            k_rot = self._rotate_keys(k[:, :, :num_rope_k], (height, width), num_k_frames)
            k = torch.cat((k_rot, k[:, :, num_rope_k:]), dim=2) if num_k_exclude_rope else k_rot
        return self.attend(q, k, v)
