"""Console helpers of the command-line tools (edgetam_train/progress.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from edgetam_train.progress import native_output_to


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
