"""Atomic checkpoint files: a save that is interrupted (kill, node failure, full disk) never damages the previous one.

``AtomicCheckpointIO`` (config ``trainer.plugins``, on by default) writes ``<path>.tmp`` next to the target,
flushes it to disk and renames it over ``<path>`` with ``os.replace``, which is atomic within one filesystem: a
reader sees either the old complete file or the new complete file, never a partial one. A save that fails removes
its ``.tmp``; one killed mid-write leaves a stale ``.tmp`` that the next save overwrites (``ckpt_path=auto`` and
``ModelCheckpoint`` only read ``*.ckpt``).

Why not Lightning's own ``TorchCheckpointIO``: it serialises the whole checkpoint into memory, writes it to a file
made by ``tempfile.mkstemp()`` in the system temp directory and moves it with ``shutil.move``. When the temp
directory is on another filesystem than the run directory (node-local ``/tmp`` vs. a shared ``logs/``, the usual
cluster layout) the move is a copy onto the target path, so a kill during that copy leaves a truncated
``last.ckpt``; it also needs the checkpoint's size in RAM and in ``/tmp``. Remote paths (``s3://`` ...) keep
Lightning's implementation.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins import TorchCheckpointIO

from edgetam_train.models.checkpoint import atomic_torch_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose local saves are atomic (:func:`atomic_torch_save`); loading and removing are
    Lightning's. Used by every checkpoint the trainer writes: ``ModelCheckpoint`` (step, last, best), the SIGTERM
    checkpoint, SLURM's ``hpc_ckpt_N.ckpt`` and ``trainer.save_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` (the dict from ``trainer.save_checkpoint``) to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options "
                            f"(got {storage_options!r} for {path})")
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
        log.debug("saved checkpoint %s", path)
