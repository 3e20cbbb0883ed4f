#!/usr/bin/env python
"""Write small synthetic datasets in the formats users already have (quick start, tests, benchmarks).

    python scripts/make_sample_data.py --out data/sample            # 8 SA-1B images, 3 SA-V videos, 2 DAVIS videos
    python scripts/make_sample_data.py --out data/sample --formats coco,mask_folder   # fine-tuning inputs

``--help`` lists the options; the generators are :mod:`edgetam_train.data.synthetic`.
"""

import sys

from edgetam_train.data.synthetic.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
