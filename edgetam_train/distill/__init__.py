"""The training method: the distillation LightningModule, its losses, prompt simulation, teachers, optimiser."""
