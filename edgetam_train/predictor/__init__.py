"""User-facing inference: :class:`ImagePredictor` (prompts on one image) and :class:`VideoPredictor` (tracking)."""

from edgetam_train.predictor.image import ImagePrediction, ImagePredictor
from edgetam_train.predictor.video import ObjectOutput, VideoPredictor, VideoState

__all__ = ["ImagePredictor", "ImagePrediction", "ObjectOutput", "VideoPredictor", "VideoState"]
