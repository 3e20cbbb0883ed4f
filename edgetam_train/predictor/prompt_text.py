"""Prompts typed on the command line: ``"x,y;x,y"`` clicks, ``"1;0"`` labels, ``"x0,y0,x1,y1"`` boxes
(``edgetam-predict image`` and ``video``)."""

from __future__ import annotations

import numpy as np


def parse_points(text: str) -> np.ndarray:
    """``"x,y;x,y"`` -> float32 (N, 2); raises ValueError naming the bad item."""
    points = []
    for item in (t.strip() for t in text.split(";")):
        if not item:
            continue
        parts = item.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            points.append([float(parts[0]), float(parts[1])])
        except ValueError:
            raise ValueError(f"--points: expected 'x,y;x,y;...', got item {item!r}") from None
    if not points:
        raise ValueError("--points: no point given")
    return np.asarray(points, dtype=np.float32)


def parse_labels(text: str) -> np.ndarray:
    """``"1;0"`` (or ``"1,0"``) -> int32 (N,) of 1 (foreground) / 0 (background)."""
    items = [t.strip() for t in text.replace(",", ";").split(";") if t.strip()]
    if not items or any(t not in ("0", "1") for t in items):
        raise ValueError(f"--labels: expected 1 (foreground) / 0 (background) separated by ';', got {text!r}")
    return np.asarray([int(t) for t in items], dtype=np.int32)


def parse_box(text: str) -> np.ndarray:
    """``"x0,y0,x1,y1"`` -> float32 (4,)."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise ValueError(f"--box: expected 'x0,y0,x1,y1', got {text!r}")
    return np.asarray(box, dtype=np.float32)
