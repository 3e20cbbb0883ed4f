"""SAM 2 image encoder: a trunk (multi-scale features) followed by an FPN neck that projects every level to d_model.

- :class:`FpnNeck`: 1x1 lateral convs (``convs.N.conv``, N = 0 for the lowest resolution) plus a top-down path on
  the chosen levels; no output convs. Also returns the sine position encoding of every level.
- :class:`ImageEncoder`: ``trunk`` + ``neck``; drops the ``scalp`` lowest-resolution levels.

With SAM 2's configs (``fpn_top_down_levels=[2, 3]``, nearest) the stride-16 map (level 2) gets the upsampled
stride-32 map added, while the stride-4 and stride-8 maps (levels 0, 1) are purely lateral; ``scalp=1`` then drops
the stride-32 map, so the encoder returns strides 4, 8, 16 and the stride-16 map is the one memory attention uses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FpnNeck(nn.Module):
    """Feature-pyramid neck: lateral 1x1 convs to ``d_model`` and a top-down sum on ``fpn_top_down_levels``.

    Args:
        position_encoding: module mapping a (B, d_model, h, w) map to its (B, d_model, h, w) encoding.
        d_model: output channels of every level.
        backbone_channel_list: trunk channels low-res first (``convs.0`` takes the lowest resolution).
        kernel_size, stride, padding: lateral conv geometry (SAM 2: 1, 1, 0).
        fpn_interp_model: ``F.interpolate`` mode of the 2x top-down upsampling (SAM 2 configs: ``nearest``).
        fuse_type: ``sum`` or ``avg`` (sum halved) of lateral and top-down features.
        fpn_top_down_levels: levels (0 = highest resolution) that receive the top-down path; None = all.

    ``forward(xs)``: trunk maps high-res first, xs[i] (B, backbone_channel_list[-1 - i], H_i, W_i) ->
    (features, pos): two lists high-res first of (B, d_model, H_i, W_i). A level with top-down input is computed in
    float32 (the upsampled map is cast to float32, as in SAM 2); each encoding has its feature's dtype.
    """

    def __init__(self, position_encoding: nn.Module, d_model: int, backbone_channel_list: Sequence[int],
                 kernel_size: int = 1, stride: int = 1, padding: int = 0, fpn_interp_model: str = "bilinear",
                 fuse_type: str = "sum", fpn_top_down_levels: Sequence[int] | None = None) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FpnNeck: fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, d_model, kernel_size, stride=stride, padding=padding)))
            for c in self.backbone_channel_list)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def _upsample(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, 2h, 2w) float32, ``fpn_interp_model`` interpolation."""
        align = None if self.fpn_interp_model == "nearest" else False
        return F.interpolate(x.to(torch.float32), scale_factor=2.0, mode=self.fpn_interp_model,
                             align_corners=align, antialias=False)

    def forward(self, xs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"FpnNeck: expected {n} trunk feature maps, got {len(xs)}")
        low_to_high: list[Tensor] = []
        prev: Tensor | None = None
        for level in range(n - 1, -1, -1):  # low resolution to high resolution
            lateral = self.convs[n - 1 - level](xs[level])
            if prev is not None and level in self.fpn_top_down_levels:
                prev = lateral + self._upsample(prev)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            low_to_high.append(prev)
        features = low_to_high[::-1]
        pos = [self.position_encoding(f).to(f.dtype) for f in features]
        return features, pos


class ImageEncoder(nn.Module):
    """Trunk + FPN neck (keys ``trunk.*``, ``neck.*``).

    Args:
        trunk: module with ``channel_list`` (low-res first); (B, 3, H, W) -> list of maps high-res first.
        neck: :class:`FpnNeck` whose ``backbone_channel_list`` equals ``trunk.channel_list``, or a partial of it
            (``_partial_: true`` in the arch configs) that is called with ``backbone_channel_list=trunk.channel_list``
            -- so the neck follows whatever trunk is configured; a channel list the partial already carries must
            equal the trunk's.
        scalp: number of lowest-resolution levels to drop from the outputs (SAM 2 / EdgeTAM: 1).

    ``forward(x (B, 3, H, W)) -> (features, pos)``: lists high-res first, for RepViT/Hiera with scalp 1:
    (B, d, H/4, W/4), (B, d, H/8, W/8), (B, d, H/16, W/16), and their sine position encodings.
    """

    def __init__(self, trunk: nn.Module, neck: nn.Module | Callable[..., nn.Module], scalp: int = 1) -> None:
        super().__init__()
        if not isinstance(neck, nn.Module):
            given = getattr(neck, "keywords", {}).get("backbone_channel_list")
            if given is not None and list(given) != list(trunk.channel_list):
                raise ValueError(f"ImageEncoder: neck backbone_channel_list {list(given)} != trunk channel_list "
                                 f"{list(trunk.channel_list)} (both low-res first; leave it out to follow the trunk)")
            neck = neck(backbone_channel_list=list(trunk.channel_list))
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"ImageEncoder: trunk channel_list {list(trunk.channel_list)} != neck "
                             f"backbone_channel_list {list(neck.backbone_channel_list)} (both low-res first)")
        if not 0 <= scalp < len(neck.backbone_channel_list):
            raise ValueError(f"ImageEncoder: scalp must be in [0, {len(neck.backbone_channel_list)}), got {scalp}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        features, pos = self.neck(self.trunk(x))
        keep = len(features) - self.scalp
        return features[:keep], pos[:keep]
