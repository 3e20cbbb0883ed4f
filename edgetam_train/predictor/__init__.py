"""User-facing inference: :class:`ImagePredictor` (prompts on one image) and :class:`VideoPredictor` (tracking)."""

from .image import ImagePrediction, ImagePredictor
from .video import ObjectOutput, VideoPredictor, VideoState

__all__ = ["ImagePredictor", "ImagePrediction", "ObjectOutput", "VideoPredictor", "VideoState"]
