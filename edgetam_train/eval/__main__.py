"""``python -m edgetam_train.eval {jf,miou} ...`` (same as ``edgetam-eval``)."""

import sys

from .cli import main

sys.exit(main())
