"""Progress lines for the command-line tools: what is being done now, and how long it took.

``edgetam-export`` and ``edgetam-eval miou`` spend up to a minute loading a checkpoint, building and fusing a model or
writing and re-checking an export before their first result; :func:`stage` says so on stderr (stdout keeps only the
results, for scripts that parse it)::

    edgetam-export: loading last.ckpt as edgetam ...
    edgetam-export: loading last.ckpt as edgetam: done in 3.1 s

Loops over many items (videos, images) use tqdm bars (:func:`edgetam_train.eval.jf.evaluate`,
:func:`edgetam_train.eval.miou.evaluate_miou`).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def stage(prog: str, what: str, stream: TextIO | None = None) -> Iterator[None]:
    """Print ``<prog>: <what> ...`` before the block and ``<prog>: <what>: done in T s`` after it (not when it raises:
    the error message follows instead)."""
    out = sys.stderr if stream is None else stream
    print(f"{prog}: {what} ...", file=out, flush=True)
    start = time.perf_counter()
    yield
    print(f"{prog}: {what}: done in {time.perf_counter() - start:.1f} s", file=out, flush=True)


@contextmanager
def native_output_to(log: str | Path | None) -> Iterator[None]:
    """Send everything written to the process's stdout and stderr file descriptors inside the block (C++ toolchains'
    own prints: LiteRT's converter, ExecuTorch's cpuinfo lines) and the Python warnings raised there to ``log``
    (appended; ``None``: discarded), so a command's console keeps its own lines. Exceptions still propagate; their
    message is printed by the caller after the descriptors are restored."""
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(os.devnull if log is None else str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
