"""The frozen SAM 2.1 teacher: loaded once, never trained, never in the optimizer or the saved checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .models.checkpoint import load_checkpoint
from .models.sam2_model import SAM2Model

log = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """Wraps a :class:`SAM2Model` so it stays frozen: ``requires_grad_(False)`` and ``eval()`` forever.

    Args:
        net: the teacher model (e.g. SAM 2.1 Hiera-B+).
        checkpoint: official ``{"model": state_dict}`` file (or training checkpoint) with its weights.
        allow_random_init: without a checkpoint, refuse to start unless this is True (then warn loudly: a random
            teacher distils noise; only for smoke tests and the quick start).
    """

    def __init__(self, net: SAM2Model, checkpoint: str | Path | None = None, allow_random_init: bool = False) -> None:
        super().__init__()
        self.net = net
        if checkpoint:
            load_checkpoint(net, checkpoint)
            log.info("teacher weights loaded from %s", checkpoint)
        elif not allow_random_init:
            raise ValueError(
                "no teacher checkpoint: set model.teacher.checkpoint=/path/to/sam2.1_hiera_base_plus.pt "
                "(official SAM 2.1 weights), or model.teacher.allow_random_init=true for a smoke test")
        else:
            msg = ("TEACHER IS RANDOMLY INITIALISED (model.teacher.allow_random_init=true): distillation targets are "
                   "noise. Use this only for smoke tests and the quick start.")
            log.warning("!" * 20 + " " + msg + " " + "!" * 20)
        self.net.requires_grad_(False)
        self.eval()  # the wrapper too, so no module under the teacher reports training=True

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignore ``mode``: the teacher always stays in eval mode (dropout off, BatchNorm statistics frozen)."""
        return super().train(False)

    def __getattr__(self, name: str):
        """Delegate attribute access (e.g. ``image_size``, ``encode_image``) to the wrapped model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor):
        """Teacher image features without autograd (see :meth:`SAM2Model.encode_image`)."""
        return self.net.encode_image(images)
