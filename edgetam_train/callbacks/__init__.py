"""Lightning callbacks of a training run, one per file, named as Lightning names its own (no ``Callback`` suffix).

Each has a config of the same name in ``configs/callbacks/`` (``<file>.yaml`` -> ``<file>.py`` -> the class).
Layer: run (they may use anything below; nothing below imports them).
"""

from edgetam_train.callbacks.batch_seed import BatchSeed
from edgetam_train.callbacks.best_checkpoint import BestCheckpoint
from edgetam_train.callbacks.ema import EMA
from edgetam_train.callbacks.final_validation import FinalValidation
from edgetam_train.callbacks.identity_check import IdentityCheck
from edgetam_train.callbacks.initial_validation import InitialValidation
from edgetam_train.callbacks.loss_curve import LossCurve
from edgetam_train.callbacks.mask_pictures import MaskPictures
from edgetam_train.callbacks.model_checkpoint import ModelCheckpoint
from edgetam_train.callbacks.sigterm_checkpoint import SigtermCheckpoint
from edgetam_train.callbacks.step_progress_bar import StepProgressBar
from edgetam_train.callbacks.throughput import Throughput
from edgetam_train.callbacks.train_log import TrainLog

__all__ = ["EMA", "BatchSeed", "BestCheckpoint", "FinalValidation", "IdentityCheck", "InitialValidation", "LossCurve",
           "MaskPictures", "ModelCheckpoint", "SigtermCheckpoint", "StepProgressBar", "Throughput", "TrainLog"]
