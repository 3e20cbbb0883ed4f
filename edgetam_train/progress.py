"""Progress lines for the command-line tools: what is being done now, and how long it took.

``edgetam-export`` and ``edgetam-eval miou`` spend up to a minute loading a checkpoint, building and fusing a model or
writing and re-checking an export before their first result; :func:`stage` says so on stderr (stdout keeps only the
results, for scripts that parse it)::

    edgetam-export: loading last.ckpt as edgetam ...
    edgetam-export: loading last.ckpt as edgetam: done in 3.1 s

Loops over many items (videos, images) use tqdm bars (:func:`edgetam_train.eval.jf.evaluate`,
:func:`edgetam_train.eval.miou.evaluate_miou`); loops that write a file per item stop cleanly on Ctrl-C
(:class:`StopOnCtrlC`) and exit with :data:`INTERRUPTED`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
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


INTERRUPTED = 130  # exit status after Ctrl-C: 128 + SIGINT, what a shell reports for a process killed by it


class StopOnCtrlC:
    """Inside the block the first Ctrl-C (SIGINT) only sets :attr:`requested`: a loop checks it after each item and
    stops with every file it wrote complete. A second Ctrl-C raises KeyboardInterrupt as usual (stop now). The
    previous handler is restored on exit; outside the main thread (no signal handlers there) nothing changes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
