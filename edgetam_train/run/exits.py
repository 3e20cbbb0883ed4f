"""How ``python train.py`` ends when the input or the machine is at fault: one line, exit status 2.

A config mistake found by the checks before anything is built (``run/preflight.py``, ``run/resume_check.py``, the
data / model / teacher checks of ``run/train.py``) and a full or unwritable disk (``ENOSPC`` during a checkpoint save,
a read-only run directory) are not bugs of this code: a traceback (75 lines through ``inline_container.cc`` for a
full disk, Hydra's "Error executing job with overrides" for a config value) buries the one line that says what to do.
:func:`run_or_exit` prints that line (``Error: ...``) on stderr, writes it to the run's log, and exits with
:data:`BAD_INPUT`. Every other exception (a bug) keeps its traceback. ``HYDRA_FULL_ERROR=1`` keeps it for these too.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

BAD_INPUT = 2  # exit status: the config, a file it names, or the disk is at fault (as edgetam-predict / -export)
# OSError numbers that mean "the disk or its permissions", not a bug: full, over quota, read-only, no permission,
# a path component that is a file
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                         errno.EEXIST})
T = TypeVar("T")


class RefusedRun(ValueError):
    """A check before training refused the run; the message names the config key or file and what was expected."""


def one_line_reason(err: BaseException) -> str | None:
    """The message to print for ``err`` when it is bad input or a disk problem (None: a bug, keep the traceback).
    An ``OSError`` is shown without its ``[Errno N]`` prefix when it carries our own message."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:  # Hydra's wrapper
        return one_line_reason(err.__cause__)
    if isinstance(err, RefusedRun):
        return str(err)
    if isinstance(err, FileNotFoundError) and err.errno is None:  # ours: "<file> does not exist (config key ...)"
        return str(err)
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        text = err.strerror or str(err)
        return text if err.filename is None else f"{err.filename}: {text}"
    return None


def _to_log_files(reason: str) -> None:
    """Write ``reason`` to the root logger's file handlers only (the run's ``<task_name>.log``): the console gets
    the ``Error:`` line once, not a second time through the console handler."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (reason,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_or_exit(fn: Callable[[], T]) -> T:
    """``fn()``; bad input or a disk problem (see :func:`one_line_reason`) -> ``Error: <reason>`` on stderr and in
    the log, then ``SystemExit(BAD_INPUT)`` without the chained tracebacks. Raised inside Hydra's task function, a
    ``SystemExit`` passes through Hydra's own error report."""
    try:
        return fn()
    except Exception as e:
        reason = one_line_reason(e)
        if reason is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _to_log_files(reason)
        print(f"Error: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(BAD_INPUT) from None


class CheckRunDir(Callback):
    """Hydra callback (``hydra.callbacks`` in ``configs/hydra/default.yaml``, after ``RefuseSecrets``): the run
    directory (``hydra.run.dir``, or ``hydra.sweep.dir`` for ``-m``) can be created and written, checked in
    ``on_run_start``, before Hydra makes it and opens ``<task_name>.log`` in it. Otherwise a read-only or misplaced
    ``paths.log_dir`` ends in Hydra's ``Unable to configure handler 'file'`` traceback; here it is one line, exit 2."""

    def _check(self, config: DictConfig, key: str) -> None:
        from edgetam_train.run.preflight import probe_writable  # the same probe as the check before the first step

        problem = probe_writable(f"{key} (under paths.log_dir)", OmegaConf.select(config, key))
        if problem:
            print(f"Error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(BAD_INPUT)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
