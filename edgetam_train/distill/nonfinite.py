"""Non-finite loss guard: a training step whose loss is NaN/inf is skipped, counted and logged; N in a row stop the run.

How a step is skipped (:meth:`NonFiniteGuard.check` in ``training_step``, :meth:`NonFiniteGuard.drop_grads` in
``on_before_optimizer_step``):

1. every rank checks its loss terms; one all-reduce (MAX) of the flag makes all ranks agree, so all skip together;
2. ``training_step`` returns :func:`zero_loss` instead of the real loss: a zero connected to every trainable
   parameter. Its backward gives exact zero gradients and, under DDP, runs the usual gradient all-reduce (returning
   None is refused by Lightning under DDP, and a rank that skips backward alone would hang the others);
3. before the optimizer step the gradients are set to None, so the optimizer leaves every parameter and its own state
   (AdamW moments, weight decay) untouched. Gradient clipping sees no gradients (norm 0) and does nothing; with
   gradient accumulation, the whole accumulated update containing the bad batch is dropped.

The global step, the LR schedule and the data position advance as for any step (the batch is consumed). BatchNorm
running statistics updated by the skipped forward pass are not rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from edgetam_train.distributed import all_reduce_max, global_rank, is_distributed

log = logging.getLogger(__name__)

# model.max_consecutive_nonfinite when the config does not set it (DistillationModule's argument)
DEFAULT_MAX_CONSECUTIVE_NONFINITE = 5


class NonFiniteLossError(RuntimeError):
    """Raised after ``model.max_consecutive_nonfinite`` skipped steps in a row."""


def describe_losses(losses: Mapping[str, Tensor]) -> str:
    """``"loss=nan, loss_mask=0.412, ..."``: every term's value (mean of a non-scalar term)."""
    parts = []
    for name, value in losses.items():
        v = value.detach().float()
        parts.append(f"{name}={float(v.mean() if v.numel() != 1 else v):.6g}")
    return ", ".join(parts)


def zero_loss(parameters: Iterable[nn.Parameter]) -> Tensor:
    """0 · Σ sum(p) over the trainable parameters: backward gives every parameter an exact zero gradient (also when
    a parameter is itself non-finite), and under DDP every parameter counts as used."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("zero_loss: no trainable parameters")
    return torch.stack([p.sum() for p in params]).sum() * 0.0


class NonFiniteGuard:
    """Counts skipped steps; decides (the same on every rank) whether a step is skipped.

    Attributes:
        total: skipped steps since the run started (kept in checkpoints by the LightningModule).
        consecutive: skipped steps in a row up to the latest step.
        pending: a skipped batch whose gradients must be dropped at the next optimizer step.
    """

    def __init__(self) -> None:
        self.total = 0
        self.consecutive = 0
        self.pending = False

    def check(self, losses: Mapping[str, Tensor], step: int, max_consecutive: int | None) -> bool:
        """True when this step must be skipped: some term in ``losses`` (name -> scalar tensor) is NaN/inf here or
        on another rank. Raises :class:`NonFiniteLossError` on the ``max_consecutive``-th skip in a row (None:
        never)."""
        distributed = is_distributed()
        local = torch.stack([~torch.isfinite(v.detach()).all() for v in losses.values()]).any()
        flag = local.to(torch.float32).reshape(1)  # on the losses' device (NCCL needs CUDA tensors)
        all_reduce_max(flag)
        if float(flag) == 0.0:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        self.pending = True
        terms = f"loss terms: {describe_losses(losses)}"
        if distributed:
            terms = f"loss terms on rank {global_rank()}: {describe_losses(losses)}" + \
                ("" if bool(local) else "; non-finite on another rank")
        if max_consecutive is not None and self.consecutive >= max_consecutive:
            raise NonFiniteLossError(
                f"non-finite loss at global step {step} ({terms}): {self.consecutive} steps in a row skipped, "
                f"reaching model.max_consecutive_nonfinite={max_consecutive}; the run is stopped. Resume from the "
                f"last checkpoint with a lower learning rate or check the data.")
        log.warning("non-finite loss at global step %d (%s): step skipped, no optimizer update (%d in a row, %d in "
                    "total)", step, terms, self.consecutive, self.total)
        return True

    def drop_grads(self, optimizer: torch.optim.Optimizer) -> bool:
        """Set every gradient of ``optimizer`` to None when a skipped batch is pending (the optimizer then updates
        nothing); returns whether it did."""
        if not self.pending:
            return False
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.pending = False
        return True

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.total = int(state.get("total", 0))
        self.consecutive = int(state.get("consecutive", 0))

