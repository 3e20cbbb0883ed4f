"""Memory attention: conditions the current frame's stride-16 features on the memory bank (SAM 2 / EdgeTAM).

Each :class:`MemoryAttentionLayer` is pre-norm: self-attention among the current frame's tokens, cross-attention
from them to the memory tokens (spatial memories, then object-pointer tokens), then an FFN. Everything here is
batch-first (B, N, C); the official implementation is sequence-first and transposes internally.
Key names follow the official checkpoint (``memory_attention.*``).
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from edgetam_train.models.rope_attention import RoPEAttention

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class MemoryAttentionLayer(nn.Module):
    """Self-attention, cross-attention to memory, FFN; each pre-norm with a residual.

    Args:
        activation: FFN activation name, "relu" or "gelu".
        cross_attention: built cross-attention module (queries d_model wide, keys/values memory-wide), usually a
            :class:`RoPEAttention` (EdgeTAM: ``k_sizes=(16, 16)``; SAM 2.1: ``k_sizes=None``).
        d_model: token width of the current frame.
        dim_feedforward: FFN hidden width.
        dropout: dropout after each sub-block and inside the FFN.
        pos_enc_at_attn: add the query position encoding to self-attention queries and keys.
        pos_enc_at_cross_attn_keys: add the memory position encoding to cross-attention keys.
        pos_enc_at_cross_attn_queries: add the query position encoding to cross-attention queries.
        self_attention: built self-attention module (usually a :class:`RoPEAttention`).

    ``forward(tgt (B, HW, d), memory (B, M, dm), pos (B, M, dm), query_pos (B, HW, d), feat_size=(H, W),
    num_k_exclude_rope=0, num_k_frames=1) -> (B, HW, d)``.
    """

    def __init__(self, activation: str, cross_attention: nn.Module, d_model: int, dim_feedforward: int,
                 dropout: float, pos_enc_at_attn: bool, pos_enc_at_cross_attn_keys: bool,
                 pos_enc_at_cross_attn_queries: bool, self_attention: nn.Module) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MemoryAttentionLayer: activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation_name = activation
        self.activation = _ACTIVATIONS[activation]
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def _self_attention(self, tgt: Tensor, query_pos: Tensor, feat_size: tuple[int, int]) -> Tensor:
        """Pre-norm self-attention block: (B, HW, d) -> (B, HW, d)."""
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        if isinstance(self.self_attn, RoPEAttention):
            x = self.self_attn(qk, qk, x, feat_size=feat_size)
        else:
            x = self.self_attn(qk, qk, x)
        return tgt + self.dropout1(x)

    def _cross_attention(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,
                         feat_size: tuple[int, int], num_k_exclude_rope: int, num_k_frames: int) -> Tensor:
        """Pre-norm cross-attention block to the memory: (B, HW, d) -> (B, HW, d)."""
        x = self.norm2(tgt)
        q = x + query_pos if self.pos_enc_at_cross_attn_queries else x
        k = memory + pos if self.pos_enc_at_cross_attn_keys else memory
        if isinstance(self.cross_attn_image, RoPEAttention):
            x = self.cross_attn_image(q, k, memory, feat_size=feat_size, num_k_exclude_rope=num_k_exclude_rope,
                                      num_k_frames=num_k_frames)
        else:
            x = self.cross_attn_image(q, k, memory)
        return tgt + self.dropout2(x)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, feat_size: tuple[int, int],
                num_k_exclude_rope: int = 0, num_k_frames: int = 1) -> Tensor:
        tgt = self._self_attention(tgt, query_pos, feat_size)
        tgt = self._cross_attention(tgt, memory, pos, query_pos, feat_size, num_k_exclude_rope, num_k_frames)
        x = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """A stack of ``num_layers`` copies of a built :class:`MemoryAttentionLayer`, then a final LayerNorm.

    Args:
        d_model: token width of the current frame (256).
        pos_enc_at_input: add 0.1 × the current frame's position encoding to its tokens before the first layer.
        layer: the layer to clone (each copy has its own weights).
        num_layers: number of copies.

    ``forward(curr (B, HW, d), curr_pos (B, HW, d), memory (B, M, dm), memory_pos (B, M, dm), feat_size=(H, W),
    num_obj_ptr_tokens=0, num_spatial_mem=1) -> (B, HW, d)``. ``memory`` is ``num_spatial_mem`` spatial-memory
    frames followed by ``num_obj_ptr_tokens`` object-pointer tokens; the pointers are not rotated by RoPE.
    """

    def __init__(self, d_model: int, pos_enc_at_input: bool, layer: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.pos_enc_at_input = pos_enc_at_input
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: Tensor, curr_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                feat_size: tuple[int, int], num_obj_ptr_tokens: int = 0, num_spatial_mem: int = 1) -> Tensor:
        if curr.shape[0] != memory.shape[0]:
            raise ValueError(f"MemoryAttention: batch of curr {curr.shape[0]} != batch of memory {memory.shape[0]}")
        out = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        for layer in self.layers:
            out = layer(out, memory, memory_pos, curr_pos, feat_size, num_k_exclude_rope=num_obj_ptr_tokens,
                        num_k_frames=num_spatial_mem)
        return self.norm(out)
