"""Console helpers of the command-line tools (edgetam_train/progress.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from edgetam_train.progress import INTERRUPTED, StopOnCtrlC, native_output_to


def test_native_output_goes_to_the_log_and_the_console_comes_back(tmp_path, capfd):
    """C-level writes (a child process, os.write on fd 1/2) and Python warnings inside the block land in the log;
    after it, the console is the console again."""
    log = tmp_path / "graph.pte.convert.log"
    with native_output_to(log):
        os.write(1, b"converter pass 1\n")
        os.write(2, b"cpuinfo: unknown core\n")
        subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
        warnings.warn("a toolchain deprecation", DeprecationWarning, stacklevel=1)
    print("after the block")
    out, err = capfd.readouterr()
    assert "after the block" in out and "converter pass" not in out + err and "cpuinfo" not in out + err
    text = log.read_text()
    assert "converter pass 1" in text and "cpuinfo: unknown core" in text and "from a child" in text
    with native_output_to(None):  # discarded
        os.write(1, b"dropped\n")
    assert "dropped" not in capfd.readouterr().out


def test_stop_on_ctrl_c_flags_the_first_sigint_and_raises_on_the_second():
    before = signal.getsignal(signal.SIGINT)
    with StopOnCtrlC() as ctrl_c:
        assert not ctrl_c.requested
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: no KeyboardInterrupt, only the flag
        time.sleep(0.01)
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before
    assert INTERRUPTED == 130
