"""Datasets: items and batches built from the on-disk formats (SA-1B images, clips, SA-V, VOS, validation,
fine-tuning)."""
