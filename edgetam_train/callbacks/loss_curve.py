"""``loss_curve.png`` next to ``metrics.csv`` at the end of a run: the training loss and its terms, the learning rate
and the validation scores against the optimiser step, one panel each.

The callback reads the ``metrics.csv`` the run's ``CSVLogger`` wrote (``<run dir>/csv/version_N/``), so the picture
shows exactly the logged numbers; without a CSV logger it does nothing. It draws at the end of ``fit`` and when the run
stops on an exception (the curve up to the failure is what one wants to see then), on global rank 0 only; a failure to
draw is logged as a warning and never stops the run. ``plot_metrics_csv`` draws any ``metrics.csv`` on its own::

    python -c "from edgetam_train.callbacks.loss_curve import plot_metrics_csv as p; p('metrics.csv', 'curve.png')"
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

log = logging.getLogger(__name__)

FILE_NAME = "loss_curve.png"
VAL_STEP = "val_step"  # edgetam_train.distill.module.VAL_STEP (not imported: this callback works with any module)
# (panel title, columns by name, columns by prefix, log scale when the values span more than a factor 10); a column is
# drawn in the first panel that takes it, and not at all when it is always 0
PANELS: tuple[tuple[str, tuple[str, ...], str | None, bool], ...] = (
    ("training loss", ("train/loss", "train/loss_task"), None, True),
    ("loss terms", (), "train/loss_", True),
    ("learning rate", (), "lr-", False),
    ("validation", (), "val/", False),
)


def read_metrics(path: str | Path, optimiser_steps: bool = False) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` as column -> [(step, value)] for the rows where the column has a finite value.

    Args:
        path: the CSV logger's file.
        optimiser_steps: give each row the optimiser step it belongs to, as the console, ``train.log`` and checkpoint
            names count (``trainer.global_step``), instead of Lightning's logger step, which is one less: a row
            logged during step k, or a validation after it, has ``step`` k - 1. A validation row's own ``val_step``
            column (logged by the distillation module) wins: the validation before training is at 0.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or "nan"))
                if optimiser_steps:
                    step = int(float(row[VAL_STEP])) if row.get(VAL_STEP) else step + 1
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("step", "epoch", VAL_STEP) or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(key, []).append((step, value))
    return series


def plot_metrics_csv(csv_path: str | Path, out_path: str | Path) -> Path | None:
    """Draw the ``PANELS`` of a ``metrics.csv`` into a PNG; returns its path, or None when nothing was logged."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or window state
    from matplotlib.ticker import MaxNLocator

    series = read_metrics(csv_path, optimiser_steps=True)
    panels, taken = [], set()
    for title, names, prefix, log_y in PANELS:
        cols = [n for n in names if n in series and n not in taken]
        cols += sorted(k for k in series if prefix and k.startswith(prefix) and k not in taken and k not in cols)
        cols = [c for c in cols if any(v != 0 for _, v in series[c])]  # e.g. loss_fm in stage 1: always 0
        taken.update(cols)
        if cols:
            panels.append((title, cols, log_y))
    if not panels:
        return None
    fig = Figure(figsize=(7.0, 2.6 * len(panels)), layout="constrained")
    for ax, (title, cols, log_y) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        for col in cols:
            steps, values = zip(*series[col])
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, linewidth=1.2,
                    label=col.removeprefix("train/"))
        values = [v for col in cols for _, v in series[col]]
        if log_y and min(values) > 0 and max(values) > 10 * min(values):  # log scale only where it spans decades
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        steps_drawn = [st for col in cols for st, _ in series[col]]
        if max(steps_drawn) - min(steps_drawn) < 5:  # a few points: whole steps around them, not a 0.01-wide axis
            ax.set_xlim(min(steps_drawn) - 1, max(steps_drawn) + 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=min(4, len(cols)), loc="best")
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    return out


class LossCurve(Callback):
    """Writes ``loss_curve.png`` next to the ``CSVLogger``'s ``metrics.csv`` at the end of fit (see module docstring).

    Args:
        file_name: name of the PNG in the CSV logger's directory.
    """

    def __init__(self, file_name: str = FILE_NAME) -> None:
        super().__init__()
        self.file_name = file_name

    def draw(self, trainer: pl.Trainer) -> Path | None:
        """Flush the CSV logger and draw its ``metrics.csv``; returns the PNG path (None: nothing to draw)."""
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            logger.save()  # metrics are buffered until the logger saves
            csv_path = Path(logger.log_dir) / "metrics.csv"
            if not csv_path.is_file():
                return None
            try:
                out = plot_metrics_csv(csv_path, csv_path.with_name(self.file_name))
            except Exception as e:  # noqa: BLE001 - a picture must never stop or fail a run
                log.warning("could not draw %s from %s: %s", self.file_name, csv_path, e)
                return None
            if out is not None:
                log.info("loss curve: %s", out)
            return out
        return None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.draw(trainer)
