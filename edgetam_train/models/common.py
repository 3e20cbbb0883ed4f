"""Small building blocks shared by several modules: an MLP and a channels-first LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` Linear layers (keys ``layers.N``) with ``activation`` between them (not after the last).

    Args:
        input_dim / hidden_dim / output_dim: widths of the first input, the hidden layers and the output.
        num_layers: number of Linear layers (1 gives a single Linear).
        activation: activation class, instantiated once and applied after every layer but the last.
        sigmoid_output: apply a sigmoid to the output.

    ``forward(x (…, input_dim)) -> (…, output_dim)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        """(…, input_dim) -> (…, output_dim)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) maps, with affine ``weight`` / ``bias`` of shape (C,).

    ``forward(x (B, C, H, W)) -> (B, C, H, W)``; biased variance, ``eps`` inside the square root.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) normalised over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
