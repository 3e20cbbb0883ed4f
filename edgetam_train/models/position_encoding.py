"""Position encodings used across the SAM 2 family.

- :class:`PositionEmbeddingSine`: fixed 2D sine/cosine encoding of a feature grid (DETR style), used by the FPN
  neck, the memory encoder and the 2D path of the spatial perceiver.
- :class:`PositionEmbeddingRandom`: random Fourier features of normalised (x, y) coordinates, used by the prompt
  encoder for points, boxes and the dense image grid. Its frequency matrix is a checkpoint buffer.
- :func:`sine_pe_1d`: 1D sine encoding of scalar positions (temporal encoding of object pointers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """2D sine position encoding of a feature grid.

    Args:
        num_pos_feats: output channels C (half encode y, half encode x).
        temperature: frequency base.
        normalize: normalise grid coordinates to (0, scale] before encoding (American spelling kept: the official
            SAM 2 constructor argument and ``configs/arch`` key).
        scale: coordinate scale when normalising (default 2π).

    Input ``x`` (B, *, H, W) is only read for its batch size, grid size, device; output (B, C, H, W) float32, a
    broadcast view of the cached (C, H, W) grid (no copy: treat it as read-only).
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000, normalize: bool = True,
                 scale: float | None = None) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale requires normalize=True")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple, Tensor] = {}

    def _freqs(self, device: torch.device) -> Tensor:
        idx = torch.arange(self.half, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.half)

    def _interleave(self, angles: Tensor) -> Tensor:
        """(..., half) angles -> (..., half) with sin on even, cos on odd frequency slots, interleaved."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    def grid(self, h: int, w: int, device: torch.device) -> Tensor:
        """Encoding of an h×w grid: (C, h, w), cached per (h, w, device)."""
        if torch.compiler.is_exporting():
            # plain ops, so an export drops the grids no output reads; a no_grad block becomes a graph node that
            # is never removed, and ExecuTorch stored its grids as constants (85 MB of a 1024 px encoder .pte)
            return self._make_grid(h, w, device)
        return self._cached_grid(h, w, device)

    @torch.no_grad()
    def _cached_grid(self, h: int, w: int, device: torch.device) -> Tensor:
        key = (h, w, str(device))
        if key not in self._cache:
            # built outside inference mode, so a grid first made under torch.inference_mode() also serves training
            with torch.inference_mode(False):
                self._cache[key] = self._make_grid(h, w, device)
        return self._cache[key]

    def _make_grid(self, h: int, w: int, device: torch.device) -> Tensor:
        """Uncached :meth:`grid`: (C, h, w) float32."""
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        if self.normalize:
            ys = ys / (ys[-1] + 1e-6) * self.scale
            xs = xs / (xs[-1] + 1e-6) * self.scale
        freqs = self._freqs(device)
        pos_y = self._interleave(ys[:, None] / freqs)  # (h, half)
        pos_x = self._interleave(xs[:, None] / freqs)  # (w, half)
        pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=-1)
        return pos.permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        # a view, not a copy: at 1024 px the stride-4 level alone is 64 MiB, and copying it cost ~0.1 s per image
        return self.grid(x.shape[-2], x.shape[-1], x.device)[None].expand(x.shape[0], -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier position encoding of coordinates normalised to [0, 1].

    Holds the buffer ``positional_encoding_gaussian_matrix`` (2, num_pos_feats); outputs 2·num_pos_feats channels.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """(..., 2) coordinates in [0, 1] (x, y) -> (..., 2·num_pos_feats)."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat((proj.sin(), proj.cos()), dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Encoding of the centres of an (h, w) grid: (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        coords = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=-1)
        return self.encode(coords).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Pixel coordinates (B, N, 2) as (x, y) in an image of (H, W) -> (B, N, C)."""
        h, w = image_size
        norm = coords.to(torch.float32) / coords.new_tensor([w, h], dtype=torch.float32)
        return self.encode(norm)


def sine_pe_1d(pos: Tensor, dim: int, temperature: float = 10000) -> Tensor:
    """1D sine encoding: positions (N,) -> (N, dim) as [sin(pos/t^k) ..., cos(pos/t^k) ...]."""
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=pos.device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    angles = pos[:, None].float() / freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)
