"""Counting of unreadable samples, shared by the image and video loaders.

At SA-1B / SA-V scale some files are always broken. A loader that meets one raises ``BadSample`` internally, skips to
another sample, and records the skip in a ``SkipCounter``; the run goes on until the fraction of skipped attempts
passes ``data.max_skip_rate``, and then stops with an error that names the rate, the threshold and the last bad paths.

Counts are plain ``{name: int}`` dicts (``as_dict`` / ``state``) so they can be logged, merged across DataLoader
workers (``SkipCounter.merge``) and all-reduced across ranks (``to_tensor`` / ``from_tensor``).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

log = logging.getLogger(__name__)

# Reasons used by the loaders; any other string is accepted too (``to_tensor`` needs a fixed list, so add new ones).
REASONS: tuple[str, ...] = (
    "missing_image",
    "corrupt_image",
    "missing_json",
    "bad_json",
    "bad_rle",
    "size_mismatch",
    "no_masks",
    "empty_after_transform",
    "corrupt_video",
    "bad_annotation",
    "missing_frame",
    "frame_count_mismatch",
    "too_short",
    "corrupt_mask",
    "too_large",
    "too_small",
)


class BadSample(Exception):
    """A sample that cannot be used. ``reason``: a short key (see ``REASONS``); ``path``: the offending file."""

    def __init__(self, reason: str, path: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))
        self.reason, self.path, self.detail = reason, str(path), detail


def read_json(path: str | Path) -> Any:
    """Parse a json annotation file; raises ``BadSample`` missing_json (absent) or bad_json (unreadable/invalid)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BadSample("missing_json", str(path)) from None
    except (OSError, ValueError) as e:
        raise BadSample("bad_json", str(path), f"{type(e).__name__}: {e}") from None


# Reasons that mean the image was read but none of its objects was usable.
MASK_REASONS = frozenset({"no_masks", "empty_after_transform", "bad_annotation", "bad_rle"})


def no_sample_reason(skipped: Mapping[str, int]) -> str:
    """Why every item was skipped, from the {reason: count} of the skips (for the error of :func:`first_readable`)."""
    if skipped and set(skipped) <= MASK_REASONS:
        why = "the images are readable but no annotation survived"
        if "empty_after_transform" in skipped:
            why += " (every object mask is empty at the training size: zero-area or sub-pixel objects?)"
        return f"{why}; skipped per reason {dict(skipped)} (the log names each file)"
    return f"skipped per reason {dict(skipped)} (the log names each file)"


def first_readable(load: Callable[[int], dict[str, Any]], index: int, length: int, skips: "SkipCounter",
                   what: str) -> dict[str, Any]:
    """``load(index)``, or if it raises ``BadSample`` the next readable item (wrapping around).

    Every failure is recorded in ``skips`` (which raises ``SkipRateExceeded`` once the rate is too high); the returned
    item carries ``skips``: {reason: count} of the items skipped to reach it. ``what`` names the data set in the error
    raised when no item at all is readable.
    """
    skipped: dict[str, int] = {}
    for offset in range(length):
        try:
            item = load((index + offset) % length)
        except BadSample as bad:
            skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
            skips.skip(bad)
            continue
        skips.ok()
        item["skips"] = skipped
        return item
    raise RuntimeError(f"no readable sample among the {length} items of {what}: {no_sample_reason(skipped)}")


class SkipRateExceeded(RuntimeError):
    """Raised when skipped / attempted passes the configured ``data.max_skip_rate``."""


class SkipCounter:
    """Counts attempted and skipped samples per reason; raises once the skip rate passes ``max_skip_rate``.

    Args:
        max_skip_rate: highest tolerated skipped / attempted fraction (config key ``data.max_skip_rate``);
            ``1.0`` never raises.
        min_attempts: the rate is only checked after this many attempts (a first bad file is not a 100 % rate).
        keep_paths: how many of the most recent bad paths to keep for the error message.
        name: shown in log lines and errors (e.g. the dataset class).

    Each bad path is logged at WARNING once (per process).
    """

    def __init__(self, max_skip_rate: float = 0.05, min_attempts: int = 20, keep_paths: int = 5, name: str = "data"):
        if not 0.0 <= max_skip_rate <= 1.0:
            raise ValueError(f"data.max_skip_rate must be in [0, 1], got {max_skip_rate}")
        self.max_skip_rate, self.min_attempts, self.name = max_skip_rate, min_attempts, name
        self.attempts = 0
        self.counts: dict[str, int] = {}
        self.last_paths: deque[str] = deque(maxlen=keep_paths)
        self._warned: set[str] = set()

    @property
    def skipped(self) -> int:
        """Total skipped samples over all reasons."""
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        """skipped / attempted (0 before any attempt)."""
        return self.skipped / self.attempts if self.attempts else 0.0

    def ok(self) -> None:
        """Record one successful attempt."""
        self.attempts += 1

    def skip(self, bad: BadSample) -> None:
        """Record one failed attempt; log its path once; raise ``SkipRateExceeded`` if the rate is now too high."""
        self.attempts += 1
        self.counts[bad.reason] = self.counts.get(bad.reason, 0) + 1
        self.last_paths.append(f"{bad.path} [{bad.reason}]")
        if bad.path not in self._warned:
            self._warned.add(bad.path)
            detail = f": {bad.detail}" if bad.detail else ""
            log.warning("%s: skipping %s (%s%s)", self.name, bad.path, bad.reason, detail)
        self.check()

    def check(self) -> None:
        """Raise ``SkipRateExceeded`` when at least ``min_attempts`` were made and the rate passes the threshold."""
        if self.attempts >= self.min_attempts and self.rate > self.max_skip_rate:
            raise SkipRateExceeded(
                f"{self.name}: skipped {self.skipped} of {self.attempts} samples (skip rate {self.rate:.1%}) which "
                f"exceeds data.max_skip_rate={self.max_skip_rate:g} ({self.max_skip_rate:.1%}); counts per reason "
                f"{self.counts}; last bad paths: {list(self.last_paths)}. Fix or remove these files, or raise "
                f"data.max_skip_rate if this much bad data is expected."
            )

    # ---------------------------------------------------------------- reading, merging, reducing

    def as_dict(self) -> dict[str, int]:
        """{"attempts": n, "skipped": n, <reason>: n, ...}: flat ints, ready for ``log_dict``."""
        return {"attempts": self.attempts, "skipped": self.skipped, **self.counts}

    def state(self) -> dict[str, int]:
        """Mergeable state (same as ``as_dict``); ``merge`` and ``from_state`` take these."""
        return self.as_dict()

    def load_state(self, state: Mapping[str, int]) -> None:
        """Replace the counts with ``state`` (a dict from ``state()``)."""
        self.attempts = int(state.get("attempts", 0))
        self.counts = {k: int(v) for k, v in state.items() if k not in ("attempts", "skipped") and int(v)}

    @classmethod
    def merge(cls, states: Iterable[Mapping[str, int] | SkipCounter], **kwargs) -> SkipCounter:
        """Sum counters or their ``state()`` dicts (e.g. one per DataLoader worker or rank) into a new counter."""
        out = cls(**kwargs)
        for s in states:
            s = s.state() if isinstance(s, SkipCounter) else s
            out.attempts += int(s.get("attempts", 0))
            for k, v in s.items():
                if k not in ("attempts", "skipped") and int(v):
                    out.counts[k] = out.counts.get(k, 0) + int(v)
        return out

    def to_tensor(self, reasons: tuple[str, ...] = REASONS) -> torch.Tensor:
        """int64 (1 + len(reasons),) = [attempts, count per reason], for ``all_reduce(SUM)`` across ranks."""
        unknown = set(self.counts) - set(reasons)
        if unknown:
            raise KeyError(f"skip reasons {sorted(unknown)} are not in the reduction list {reasons}")
        return torch.tensor([self.attempts] + [self.counts.get(r, 0) for r in reasons], dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, reasons: tuple[str, ...] = REASONS, **kwargs) -> SkipCounter:
        """Inverse of ``to_tensor`` (e.g. after an all-reduce)."""
        values = [int(v) for v in t.tolist()]
        out = cls(**kwargs)
        out.attempts = values[0]
        out.counts = {r: v for r, v in zip(reasons, values[1:]) if v}
        return out

    def __repr__(self) -> str:
        return f"SkipCounter({self.name}: {self.as_dict()}, max_skip_rate={self.max_skip_rate})"
