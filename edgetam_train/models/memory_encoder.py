"""Memory encoder: fuses a frame's stride-16 features with its predicted mask into a memory feature map (SAM 2).

mask (B, 1, 16H, 16W) -> MaskDownSampler -> (B, 256, H, W) --+
pix_feat (B, 256, H, W) -> pix_feat_proj (1×1) ---------------+-> Fuser (ConvNeXt blocks) -> out_proj (1×1)
                                                                -> memory (B, 64, H, W) + its sine position encoding

Key names follow the official checkpoint (``memory_encoder.*``).
"""

from __future__ import annotations

import copy
import math

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from edgetam_train.models.common import LayerNorm2d


class MaskDownSampler(nn.Module):
    """Downsample a mask by ``total_stride`` in conv steps of ``stride``, then project to ``embed_dim`` channels.

    Each step is Conv(k, stride) -> LayerNorm2d -> activation and multiplies the channels by stride² (1 -> 4 -> 16
    -> 64 -> 256 for stride 2, total 16); a final 1×1 conv maps to ``embed_dim``. Children of ``encoder`` are
    numbered as in the checkpoint (conv at 0, 3, 6, 9, final conv at 12 for four steps).

    ``forward(x (B, 1, H, W)) -> (B, embed_dim, H / total_stride, W / total_stride)``.
    """

    def __init__(self, embed_dim: int = 256, kernel_size: int = 4, stride: int = 4, padding: int = 0,
                 total_stride: int = 16, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        num_steps = int(math.log2(total_stride) // math.log2(stride))
        if stride ** num_steps != total_stride:
            raise ValueError(f"MaskDownSampler: total_stride {total_stride} is not a power of stride {stride}")
        self.encoder = nn.Sequential()
        in_ch = 1
        for _ in range(num_steps):
            out_ch = in_ch * stride ** 2
            self.encoder.append(nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding))
            self.encoder.append(LayerNorm2d(out_ch))
            self.encoder.append(activation())
            in_ch = out_ch
        self.encoder.append(nn.Conv2d(in_ch, embed_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv -> LayerNorm2d -> Linear(4·dim) -> GELU -> Linear(dim) -> layer scale,
    plus a residual with optional drop-path.

    Args:
        dim: channels.
        kernel_size, padding: of the (depthwise) conv.
        drop_path: stochastic-depth rate.
        layer_scale_init_value: initial layer scale ``gamma``; <= 0 disables it.
        use_dwconv: depthwise (groups=dim) or dense conv.

    ``forward(x (B, dim, H, W)) -> (B, dim, H, W)``.
    """

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6, use_dwconv: bool = True) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # channels-last for the linears
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Fuser(nn.Module):
    """Optional 1×1 input projection, then ``num_layers`` copies of a built layer (e.g. :class:`CXBlock`).

    ``forward(x (B, C, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, layer: nn.Module, num_layers: int, dim: int | None = None,
                 input_projection: bool = False) -> None:
        super().__init__()
        if input_projection and dim is None:
            raise ValueError("Fuser: input_projection=True needs dim")
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (features, mask) of a frame into a memory map and its position encoding.

    Args:
        out_dim: memory channels (64); a 1×1 ``out_proj`` is added when it differs from ``in_dim``.
        mask_downsampler: built :class:`MaskDownSampler` (to ``in_dim`` channels).
        fuser: built :class:`Fuser`.
        position_encoding: module mapping (B, out_dim, H, W) -> (B, out_dim, H, W) (sine encoding).
        in_dim: channels of the image features (256).

    ``forward(pix_feat (B, in_dim, H, W), masks (B, 1, 16H, 16W), skip_mask_sigmoid=False)
    -> (features (B, out_dim, H, W), pos (B, out_dim, H, W))``. Masks are passed through a sigmoid unless
    ``skip_mask_sigmoid`` (the caller already mapped logits to [0, 1] and scaled them).
    """

    def __init__(self, out_dim: int, mask_downsampler: nn.Module, fuser: nn.Module, position_encoding: nn.Module,
                 in_dim: int = 256) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(self, pix_feat: Tensor, masks: Tensor, skip_mask_sigmoid: bool = False) -> tuple[Tensor, Tensor]:
        if not skip_mask_sigmoid:
            masks = masks.sigmoid()
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)
