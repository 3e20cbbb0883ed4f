"""``python -m edgetam_train.export CKPT --format {official,hf,onnx} --out PATH`` (same as ``edgetam-export``)."""

import sys

from edgetam_train.export.cli import main

sys.exit(main())
