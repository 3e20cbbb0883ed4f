"""``python -m edgetam_train.eval {jf,miou} ...`` (same as ``edgetam-eval``)."""

import sys

from edgetam_train.eval.cli import main

sys.exit(main())
