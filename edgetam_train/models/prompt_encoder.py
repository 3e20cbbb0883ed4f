"""SAM prompt encoder: clicks and box corners -> sparse tokens, a mask prompt -> a dense embedding.

Point labels: 1 positive click, 0 negative click, 2 box top-left, 3 box bottom-right, -1 padding (not a point).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import LayerNorm2d
from .position_encoding import PositionEmbeddingRandom

NUM_POINT_LABELS = 4  # 0 neg, 1 pos, 2 box top-left, 3 box bottom-right


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Args:
        embed_dim: token channels C (256).
        image_embedding_size: (h, w) of the stride-16 feature grid.
        input_image_size: (H, W) of the model input; click coordinates are pixels of it.
        mask_in_chans: hidden channels of the mask-prompt downscaler.
        activation: activation of the mask downscaler.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int = 16, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2), LayerNorm2d(quarter), activation(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans), activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Position encoding of the feature grid: (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Clicks (B, N, 2) pixel xy + labels (B, N) -> tokens (B, N[+1], C); ``pad`` appends a not-a-point token."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            bad = labels[(labels < -1) | (labels >= NUM_POINT_LABELS)]
            if bad.numel():
                raise ValueError(f"point label {int(bad[0])} is not one of -1 (padding), 0 (negative), "
                                 f"1 (positive), 2 (box top-left), 3 (box bottom-right)")
        coords = coords + 0.5  # pixel centres
        if pad:
            coords = torch.cat((coords, coords.new_zeros(coords.shape[0], 1, 2)), dim=1)
            labels = torch.cat((labels, -torch.ones_like(labels[:, :1])), dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        table = torch.cat([e.weight for e in self.point_embeddings], dim=0)  # (4, C)
        typed = pe + table[labels.clamp(min=0).long()]
        return torch.where((labels == -1).unsqueeze(-1), self.not_a_point_embed.weight.expand_as(pe), typed)

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """Boxes (B, 4) x0, y0, x1, y1 -> two corner tokens (B, 2, C)."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        return pe + torch.cat((self.point_embeddings[2].weight, self.point_embeddings[3].weight))[None]

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        """-> sparse (B, N', C) tokens and dense (B, C, h, w) embedding (learned no-mask embedding without a mask)."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        else:
            bs = masks.shape[0] if masks is not None else 1
        weight = self.no_mask_embed.weight
        sparse = [weight.new_zeros(bs, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return torch.cat(sparse, dim=1), dense
