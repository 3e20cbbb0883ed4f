"""A console that shows each line once and nothing the user cannot act on.

- ``lightning/__init__.py`` gives the ``lightning`` logger its own stderr handler *and* lets it propagate, so under
  Hydra (whose root logger writes the console and ``train.log``) every Lightning line is printed twice
  (``INFO: Seed set to 0`` on stderr and ``[...][lightning...][INFO] - Seed set to 0`` on stdout). When the root logger
  has handlers, Lightning's own is removed: each line comes once, formatted like ours, and reaches ``train.log``.
- ``NOISE``: warnings and log lines that come from the installed library versions, not from the user's config
  (a deprecation inside Lightning's own pytree helper, an advertisement for another logging service). Only these exact
  messages are hidden; every other warning is shown.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger or warning, message regex) the user can do nothing about
NOISE_WARNINGS: tuple[str, ...] = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # lightning/pytorch/utilities/_pytree.py with torch >= 2.10
    # frozen modules (model.freeze), BatchNorm with freeze_batchnorm and under LoRA are in eval mode on purpose;
    # DistillationModule says so once in its own words ("frozen (eval mode, not optimised): ...")
    r"Found \d+ module\(s\) in eval mode at the start of training",
)
NOISE_LOG_LINES: tuple[str, ...] = (
    r"^💡 Tip: For seamless cloud logging",  # lightning's LitLogger advertisement, printed by every Trainer
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def drop_duplicate_lightning_handler() -> int:
    """Remove the handlers ``lightning`` attached to its loggers when the root logger already has handlers (Hydra's);
    returns how many were removed."""
    if not logging.getLogger().handlers:
        return 0
    removed = 0
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
                removed += 1
        logger.propagate = True
    return removed


def hide_noise() -> None:
    """Ignore the ``NOISE_WARNINGS`` and drop the ``NOISE_LOG_LINES`` from Lightning's loggers (idempotent)."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(NOISE_LOG_LINES))


def tidy_console() -> None:
    """Both of the above; called once at the start of a training run."""
    drop_duplicate_lightning_handler()
    hide_noise()
