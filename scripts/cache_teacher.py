#!/usr/bin/env python
"""Cache the frozen teacher's F16 for stage 1 (same as the ``edgetam-cache-teacher`` console script).

    python scripts/cache_teacher.py --root data/sa1b --out cache/f16_b+_1024 \
        --teacher sam2.1_hiera_b+ --checkpoint weights/sam2.1_hiera_base_plus.pt --image-size 1024

then train with ``data.teacher_cache=cache/f16_b+_1024``. ``--help`` lists the options; see
``edgetam_train/distill/cache_teacher.py`` (resuming, several GPUs) and ``edgetam_train/data/teacher_cache.py`` (format).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetam_train.distill.cache_teacher import main

if __name__ == "__main__":
    sys.exit(main())
