"""``callbacks.model_checkpoint``: ``last.ckpt`` holds the final step even when ``max_steps`` is off the schedule."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from edgetam_train.callbacks import ModelCheckpoint


def _fit(tmp_path, cls, max_steps: int) -> dict:
    ckpt = cls(dirpath=tmp_path, filename="step_{step:07d}", auto_insert_metric_name=False, monitor="step",
               mode="max", save_top_k=3, save_last=True, every_n_train_steps=2, save_on_train_epoch_end=False)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(BoringModel())
    return torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("max_steps", [3, 4])
def test_last_checkpoint_is_the_final_step(tmp_path, max_steps):
    last = _fit(tmp_path, ModelCheckpoint, max_steps)
    assert last["global_step"] == max_steps
    steps = sorted(p.name for p in tmp_path.glob("step_*.ckpt"))
    assert steps == [f"step_{s:07d}.ckpt" for s in range(2, max_steps + 1, 2)]  # the schedule is unchanged


def test_lightning_alone_leaves_last_behind(tmp_path):
    """Why the subclass exists: with Lightning's class, 3 steps on a 2-step schedule leave last.ckpt at step 2."""
    assert _fit(tmp_path, LightningModelCheckpoint, 3)["global_step"] == 2
