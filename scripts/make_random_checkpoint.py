#!/usr/bin/env python
"""Write a randomly initialised model in the official checkpoint layout (``{"model": state_dict}``), for demos and
tests that need "an edgetam.pt" without downloading weights (``make finetune-demo``). Its predictions are noise.

Usage::

    python scripts/make_random_checkpoint.py --out data/sample/edgetam_random.pt            # EdgeTAM
    python scripts/make_random_checkpoint.py --model sam2.1_hiera_t --out data/sample/sam2.1_t_random.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv``, build the model with seed ``--seed``, save it; returns the written path."""
    from edgetam_train.models.build import available_models, build_model
    from edgetam_train.models.checkpoint import save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .pt file to write")
    parser.add_argument("--model", default="edgetam", help=f"architecture: {', '.join(available_models())}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    path = save_checkpoint(build_model(args.model), args.out)
    print(f"wrote {path}: a RANDOMLY INITIALISED {args.model} in the official layout (for demos and tests only)")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
