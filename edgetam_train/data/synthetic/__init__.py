"""Synthetic datasets in the formats users have (SA-1B, SA-V, DAVIS, COCO, mask folders) for the quick start, the
tests and the benchmarks: ``make_sample_data(argv)`` (the ``scripts/make_sample_data.py`` CLI) writes them.

Modules: ``scenes`` (still scenes), ``videos`` (moving shapes, mp4), one writer module per format (``sa1b``, ``sav``,
``davis``, ``finetune``: COCO and mask folders), ``cli`` (options, ``WRITERS``).
"""

from edgetam_train.data.synthetic.cli import WRITERS
from edgetam_train.data.synthetic.cli import main as make_sample_data

__all__ = ["WRITERS", "make_sample_data"]
