"""Step-exact resume of the training data mid-epoch: a resumed run sees exactly the batches the interrupted one
would have seen next.

What Lightning provides: it restores the loop counters (epoch, batch index, global step), calls
``LightningDataModule.state_dict`` / ``load_state_dict`` around checkpoints, and calls the sampler's ``set_epoch``
at every epoch start. It does not move a plain ``DataLoader`` past the batches already consumed (only loaders that
implement ``state_dict`` / ``load_state_dict`` themselves, e.g. torchdata's ``StatefulDataLoader``), so a mid-epoch
resume would start the epoch over.

What this module adds:

- :class:`ResumableDataModule` (mixin of our DataModules) puts the training position into every checkpoint, read
  from Lightning's own counters at save time: ``{"epoch": e, "batches": k}`` = ``k`` batches of epoch ``e`` consumed
  (normalised to ``(e + 1, 0)`` when the epoch was complete). On resume, ``train_dataloader`` hands it to the sampler
  before Lightning creates the first iterator (with ``num_workers > 0`` the workers start drawing indices right
  then, before Lightning's ``set_epoch``).
- :class:`ResumableSampler` (mixin of our training samplers): ``resume_at(epoch, skip)`` sets the epoch and drops
  the first ``skip`` items of that epoch's next iteration. Items are sample indices (``skip`` = batches × batch
  size) or, for batch samplers, whole batches. Skipping indices costs nothing: no sample is loaded to be thrown away.

The per-item randomness (masks sampled, flips, augmentation) depends only on (seed, epoch, index), and the step's
randomness (prompts) on (seed, rank, epoch, batch) (``edgetam_train/callbacks/batch_seed.py``), so the skipped-to batch
is the same batch, with the same prompts.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterator
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

log = logging.getLogger(__name__)

T = TypeVar("T")

MID_EPOCH_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"


def train_position(trainer: pl.Trainer) -> dict[str, int]:
    """``{"epoch": e, "batches": k}``: the next training batch is batch ``k`` of epoch ``e``, from Lightning's
    counters. ``e`` is the epoch Lightning hands to ``set_epoch`` (``epoch_progress.current.processed``); while that
    epoch runs, ``k`` is the number of its batches fetched for training (``batch_progress.current.ready``); between
    epochs (or once all of an epoch's batches are used) it is ``(next epoch, 0)``."""
    epochs = trainer.fit_loop.epoch_progress.current
    epoch = int(epochs.processed)
    in_progress = epochs.started > epochs.processed
    batches = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready) if in_progress else 0
    if batches >= trainer.num_training_batches:
        epoch, batches = epoch + 1, 0
    return {"epoch": epoch, "batches": batches}


class ResumableSampler:
    """Mixin for a sampler with an ``epoch`` attribute and ``set_epoch``; its ``__iter__`` passes its iterator
    through :meth:`skip_resumed`."""

    epoch: int
    _resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, skip: int) -> None:
        """Go to ``epoch`` and drop the first ``skip`` items of its next iteration (once)."""
        if skip < 0:
            raise ValueError(f"resume_at: skip must be >= 0, got {skip}")
        self.set_epoch(epoch)  # type: ignore[attr-defined]  (the sampler class's)
        self._resume = (int(epoch), int(skip))

    def skip_resumed(self, items: Iterator[T]) -> Iterator[T]:
        """``items`` without the first ``skip`` ones when a resume for the current epoch is pending; the pending
        resume is used up by the first iteration after ``resume_at`` whatever its epoch."""
        resume, self._resume = self._resume, None
        if resume is None or resume[1] == 0:
            return items
        if resume[0] != self.epoch:
            log.warning("resume position (epoch %d, item %d) not used: the sampler iterates epoch %d",
                        resume[0], resume[1], self.epoch)
            return items
        return itertools.islice(items, resume[1], None)


class ResumableDataModule:
    """Mixin for a ``LightningDataModule``: the training position in checkpoints (``state_dict``), and
    :meth:`resume_sampler` for ``train_dataloader`` to apply a loaded one."""

    trainer: pl.Trainer | None
    _resume_position: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"train_position": {"epoch", "batches"}}`` while fitting (Lightning stores it in the checkpoint)."""
        state = dict(super().state_dict())  # type: ignore[misc]
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING and trainer.num_training_batches:
            state["train_position"] = train_position(trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's training position for the next ``train_dataloader``."""
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._resume_position = state_dict.get("train_position")
        if self._resume_position is not None:
            # Lightning warns that a plain DataLoader cannot resume mid-epoch: this one does (resume_sampler)
            warnings.filterwarnings("ignore", message=MID_EPOCH_WARNING, category=PossibleUserWarning)

    def resume_sampler(self, sampler: ResumableSampler, items_per_batch: int) -> None:
        """Apply a loaded training position to ``sampler`` (once): skip ``batches × items_per_batch`` items."""
        position, self._resume_position = self._resume_position, None
        if position is None:
            return
        epoch, batches = int(position["epoch"]), int(position["batches"])
        sampler.resume_at(epoch, batches * items_per_batch)
        log.info("training data resumes at epoch %d after %d batches", epoch, batches)
