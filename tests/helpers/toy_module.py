"""The smallest LightningModule: one linear layer on (B, 4) inputs, SGD. For tests of the training loop's machinery
(signals, checkpoint I/O) where the model does not matter."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class ToyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
