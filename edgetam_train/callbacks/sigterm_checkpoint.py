"""SIGTERM or a first Ctrl-C → save ``checkpoints/last.ckpt`` and exit cleanly (exit status 0); the next launch
resumes from it. A second Ctrl-C exits at once.

What Lightning does by itself (``_SignalConnector``): on SIGTERM it sets ``trainer.received_sigterm``, forwards the
signal to the processes it launched, finishes the current training batch (under DDP every rank stops at the same
batch) and raises ``SIGTERMException`` (a ``SystemExit`` with status 0); callbacks see it in ``on_exception``. It
saves nothing.

This callback saves the full training state there (weights, optimizer, LR schedule, loop counters, data position) to
``<dirpath>/<filename>`` through the trainer's CheckpointIO (atomic, ``edgetam_train.run.checkpoint_io``). It is the
same file ``ModelCheckpoint(save_last=True)`` writes, so ``ckpt_path=auto`` resumes from it and ``ModelCheckpoint``
keeps overwriting it afterwards. A SIGTERM that interrupts a validation run (Lightning stops at the next validation
batch) saves nothing: resuming mid-validation would lose the partial scores, and the step checkpoint written just
before validation (``every_n_train_steps`` divides ``val_check_interval``) is the resume point.

Ctrl-C (SIGINT): Lightning's own handling of ``KeyboardInterrupt`` saves nothing, and the interrupt lands anywhere in
a step (mid optimizer update). While fitting, this callback installs a SIGINT handler in the main process: the first
Ctrl-C is turned into Lightning's SIGTERM flag (the current batch finishes and ``last.ckpt`` is saved as above;
under DDP the ranks agree at the end of each batch whether any of them got a Ctrl-C, so all stop at the same batch); a
second Ctrl-C raises ``KeyboardInterrupt`` at once (Lightning's shutdown, exit
status 1; a save in progress is abandoned and leaves the previous ``last.ckpt`` intact, the writes are atomic).
DataLoader workers ignore SIGINT (``edgetam_train.data.workers.init_worker``): the terminal sends Ctrl-C to the
whole process group, and a worker that quit would end the run before the checkpoint is written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class SigtermCheckpoint(Callback):
    """Saves a resumable checkpoint when the training run is stopped by SIGTERM.

    Args:
        dirpath: directory of the checkpoint (config: ``${paths.ckpt_dir}``).
        filename: file name (``last.ckpt``: the file ``ckpt_path=auto`` resumes from).
        on_sigint: also save on the first Ctrl-C (SIGINT) while fitting; a second Ctrl-C exits at once.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt", on_sigint: bool = True) -> None:
        if not filename:
            raise ValueError("SigtermCheckpoint: filename must not be empty")
        self.path = Path(dirpath) / filename
        self.on_sigint = on_sigint
        self.saved: Path | None = None
        self.sigints = 0  # Ctrl-Cs received while fitting
        self._stop_requested = False  # a Ctrl-C on this rank, not yet agreed on by all ranks (DDP)
        self._trainer: pl.Trainer | None = None  # set while the SIGINT handler is in charge
        self._previous_sigint: Any = None

    # ------------------------------------------------------------------ Ctrl-C
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.on_sigint or threading.current_thread() is not threading.main_thread():
            return
        self.sigints, self._trainer, self._stop_requested = 0, trainer, False
        self._previous_sigint = signal.signal(signal.SIGINT, self._handle_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._trainer is None:
            return
        self._trainer = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) == self._handle_sigint:
            signal.signal(signal.SIGINT, self._previous_sigint)

    def _handle_sigint(self, signum: int, frame: Any) -> None:
        """First Ctrl-C while fitting: stop after this batch and save (Lightning's SIGTERM path); otherwise
        ``KeyboardInterrupt`` now. (Lightning re-installs this handler when it restores the signal handlers it
        found at fit start, so it must also behave after ``teardown``.)"""
        trainer = self._trainer
        self.sigints += 1
        if trainer is None or self.sigints > 1:
            if trainer is not None:
                log.warning("second Ctrl-C: exiting now without saving")
            raise KeyboardInterrupt
        if trainer.world_size > 1:
            self._stop_requested = True  # agreed on by all ranks at the end of the batch (on_train_batch_end)
        else:
            trainer._signal_connector.received_sigterm = True  # the fit loop raises SIGTERMException after this batch
        if trainer.is_global_zero:
            log.warning("Ctrl-C: finishing the current batch, then saving %s and exiting (press Ctrl-C again to exit "
                        "at once without saving)", self.path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Under DDP: stop every rank after this batch when any rank got a Ctrl-C (one tiny all-reduce per batch).
        The terminal's SIGINT reaches the ranks at slightly different moments; if each rank decided alone, one could
        stop a batch earlier than another and leave it waiting in a collective."""
        if self._trainer is None or trainer.world_size == 1:
            return
        if trainer.strategy.reduce_boolean_decision(self._stop_requested, all=False):
            trainer._signal_connector.received_sigterm = True  # the same batch on every rank

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.validating or trainer.sanity_checking:
            log.warning("%s during validation at step %d: no checkpoint saved; the run resumes from %s as "
                        "last written", "Ctrl-C" if self.sigints else "SIGTERM", trainer.global_step, self.path)
            return
        # ModelCheckpoint(save_last) writing the same file: make it treat this file as its own last checkpoint (it
        # is part of the saved state), else after resuming it would write last-v1.ckpt beside it
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath and \
                    os.path.abspath(Path(cb.dirpath) / (cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)) == \
                    os.path.abspath(self.path):
                cb.last_model_path = str(self.path)
        # Lightning's own checkpoint dict; the strategy writes it on global rank 0 only. Not trainer.save_checkpoint:
        # its closing barrier could wait for a rank that is already leaving under DDP.
        checkpoint: dict[str, Any] = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.save_checkpoint(checkpoint, str(self.path))
        self.saved = self.path
        if trainer.is_global_zero:
            log.info("%s: saved %s at global step %d; exiting (re-launch with the same run_name to resume)",
                     "Ctrl-C" if self.sigints else "SIGTERM", self.path, trainer.global_step)
