"""User-facing inference: :class:`ImagePredictor` (prompts on one image) and :class:`VideoPredictor` (tracking)."""

from .image import ImagePredictor, ImagePrediction

__all__ = ["ImagePredictor", "ImagePrediction"]
