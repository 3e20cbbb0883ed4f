"""Evaluation: video J&F (:mod:`.jf`, DAVIS 2017 and SA-V protocols) and interactive N-click mIoU (:mod:`.miou`).

Command line: ``edgetam-eval {jf,miou}`` (:mod:`.cli`).
"""

from edgetam_train.eval.jf import (
    JFResult,
    ObjectScore,
    boundary_f,
    evaluate,
    evaluate_video,
    region_similarity,
    seg2bmap,
)

__all__ = ["JFResult", "ObjectScore", "boundary_f", "evaluate", "evaluate_video", "region_similarity", "seg2bmap"]
