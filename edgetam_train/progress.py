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

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
