"""User-facing inference: :class:`ImagePredictor` (prompts on one image) and :class:`VideoPredictor` (tracking),
:class:`StreamingTracker` (frames one at a time)."""

from edgetam_train.predictor.image import ImagePrediction, ImagePredictor
from edgetam_train.predictor.streaming import StreamingTracker
from edgetam_train.predictor.video import ObjectOutput, VideoPredictor, VideoState

__all__ = ["ImagePredictor", "ImagePrediction", "ObjectOutput", "StreamingTracker", "VideoPredictor", "VideoState"]
