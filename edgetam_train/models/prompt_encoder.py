"""SAM prompt encoder: clicks and box corners -> sparse tokens, a mask prompt -> a dense embedding.

Point labels: 1 positive click, 0 negative click, 2 box top-left, 3 box bottom-right, -1 padding (not a point).
A point token is ``random-Fourier PE(xy + 0.5) + point_embeddings[label]``; a padding token is ``not_a_point_embed``
alone (its coordinates are ignored).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgetam_train.models.common import LayerNorm2d
from edgetam_train.models.position_encoding import PositionEmbeddingRandom

NUM_POINT_LABELS = 4  # 0 neg, 1 pos, 2 box top-left, 3 box bottom-right
PAD_LABEL = -1
_LABEL_HELP = "-1 (padding), 0 (negative), 1 (positive), 2 (box top-left), 3 (box bottom-right)"


def _is_tracing() -> bool:
    """True under jit tracing, torch.compile / torch.export or ONNX export (no data-dependent Python checks then)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return (torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting()
            or torch.onnx.is_in_onnx_export())


def check_point_labels(labels: Tensor) -> None:
    """Raise ValueError naming the first label outside {-1, 0, 1, 2, 3}; skipped while tracing/exporting."""
    if _is_tracing() or labels.numel() == 0:
        return
    bad = (labels < PAD_LABEL) | (labels >= NUM_POINT_LABELS)
    if labels.is_floating_point():
        bad = bad | (labels != labels.trunc())
    if bad.any():  # the only host sync; the message is built on failure only
        value = labels[bad][0].item()
        raise ValueError(f"point label {value:g} is not one of {_LABEL_HELP}")


class PromptEncoder(nn.Module):
    """Encodes point / box / mask prompts for the mask decoder.

    Args:
        embed_dim: token channels C (256).
        image_embedding_size: (h, w) of the stride-16 feature grid.
        input_image_size: (H, W) of the model input; click and box coordinates are pixels of it.
        mask_in_chans: hidden channels of the mask-prompt downscaler.
        activation: activation class of the mask downscaler.

    ``forward(points, boxes, masks) -> (sparse (B, N', C), dense (B, C, h, w))``.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int = 16, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2), LayerNorm2d(quarter), activation(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2), LayerNorm2d(mask_in_chans), activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(4h, 4w): the spatial size a mask prompt must have."""
        return 4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1]

    def get_dense_pe(self) -> Tensor:
        """Position encoding of the feature-grid cell centres: (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def label_table(self) -> Tensor:
        """The four point-type embeddings stacked: (4, C), row = label."""
        return torch.cat([e.weight for e in self.point_embeddings], dim=0)

    def embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Clicks -> tokens.

        Args:
            coords: (B, N, 2) pixel (x, y) in the input image.
            labels: (B, N) integer labels in {-1, 0, 1, 2, 3} (float tensors holding those values are accepted).
            pad: append one padding token (the official encoder does this when no box is given).
        Returns:
            (B, N + pad, C) tokens.
        """
        check_point_labels(labels)
        coords = coords + 0.5  # pixel centres
        if pad:
            coords = torch.cat((coords, coords.new_zeros(coords.shape[0], 1, 2)), dim=1)
            labels = torch.cat((labels, torch.full_like(labels[:, :1], PAD_LABEL)), dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        typed = pe + self.label_table()[labels.clamp(min=0).long()]  # gather: export-friendly, no boolean indexing
        not_a_point = self.not_a_point_embed.weight.to(typed.dtype).expand_as(typed)
        return torch.where((labels == PAD_LABEL).unsqueeze(-1), not_a_point, typed)

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """Boxes (B, 4) pixel x0, y0, x1, y1 -> two corner tokens (B, 2, C) (labels 2 and 3)."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        return pe + self.label_table()[2:4].unsqueeze(0)

    def embed_masks(self, masks: Tensor) -> Tensor:
        """Mask-prompt logits (B, 1, 4h, 4w) -> dense embedding (B, C, h, w)."""
        if tuple(masks.shape[-2:]) != self.mask_input_size or masks.shape[1] != 1:
            raise ValueError(f"mask prompt must be (B, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}), "
                             f"got {tuple(masks.shape)}")
        return self.mask_downscaling(masks)

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        """Embed the prompts.

        Args:
            points: (coords (B, N, 2) pixel xy, labels (B, N)) or None.
            boxes: (B, 4) pixel x0, y0, x1, y1 or None.
            masks: (B, 1, 4h, 4w) mask logits or None.
        Returns:
            sparse (B, N', C): point tokens (+ a padding token when there is no box), then the two box tokens;
            dense (B, C, h, w): the embedded mask, or the learned ``no_mask_embed`` broadcast over the grid.
            B comes from the first given of points, boxes, masks (1 if none).
        """
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
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return torch.cat(sparse, dim=1), dense
