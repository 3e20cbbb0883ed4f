"""Image and mask transforms of both stages, in one place (the ImageNet constants and the square resize they use
live in :mod:`edgetam_train.imaging`): the mask resize, the stage-1 augmentation (and the spec a teacher cache records
of it), and the stage-2 clip augmentation.

Geometry (SAM 2 training's ``RandomResizeAPI(square=True)``, and both official predictors): every image and frame is
resized to S×S, stretched (the aspect ratio is not kept), no padding, no crop. Masks follow the same S×S geometry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD, normalise, resize_square

# SAM 2's RandomAffine fill (``image_mean=(123, 116, 103)``, training/dataset/transforms.py): ~0 after normalising.
AFFINE_FILL: tuple[int, int, int] = (123, 116, 103)


def resize_mask_square(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w) 0/1 (or integer label) map -> C-order (size, size), pixel-centre nearest (``INTER_NEAREST_EXACT``).

    The mask lands on the same S×S grid as its image. SAM 2 resizes masks bilinearly and rounds (threshold 0.5);
    nearest on pixel centres agrees with it except on boundary pixels and costs ~1 ms instead of ~15 ms per SA-1B
    mask (64 per image). A Fortran-order mask (pycocotools' decode) is resized as its C-contiguous transpose, so no
    full-resolution transpose copy is made; nearest sampling works per axis, so both orders give the same result.
    """
    if mask.shape == (size, size):
        return np.ascontiguousarray(mask)
    if not mask.flags.c_contiguous and mask.T.flags.c_contiguous:
        return cv2.transpose(cv2.resize(mask.T, (size, size), interpolation=cv2.INTER_NEAREST_EXACT))
    return cv2.resize(np.ascontiguousarray(mask), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def resize_frames(frames: Sequence[np.ndarray], image_size: int) -> list[np.ndarray]:
    """Each uint8 (H, W, 3) frame resized to ``image_size`` square (:func:`resize_square`, bilinear)."""
    return [resize_square(f, image_size) for f in frames]


def build_augment(hflip_p: float) -> A.Compose:
    """Stage-1 pipeline on the S×S image and its masks: HorizontalFlip(p) -> Normalize (ImageNet).

    The output's ``applied_transforms`` lists what ran (it tells whether the flip happened; the teacher cache needs
    it). A teacher cache (:func:`transform_spec`) supports only these two transforms.
    """
    return A.Compose([A.HorizontalFlip(p=hflip_p),
                      A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)],
                     save_applied_params=True)


def to_tensors(frames: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (T, S, S, 3) frames and 0/1 (T, K, S, S) masks -> float32 (T, 3, S, S) ImageNet-normalised frames and
    bool (T, K, S, S) masks."""
    images = normalise(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float(), max_value=255.0)
    return images, torch.from_numpy(np.ascontiguousarray(masks)).bool()



def affine_matrix(angle: float, shear_x: float, orig_hw: tuple[int, int], size: int) -> np.ndarray:
    """2x3 ``cv2.warpAffine`` matrix, on the S×S grid, of the rotation + x-shear about the centre that SAM 2 applies
    to the frame at its original (H, W) size before the square resize (torchvision's rotation-shear matrix).

    Resize-then-warp with this matrix moves every point where warp-then-resize does: the original-size matrix is
    conjugated by the (non-uniform) resize, D·A·D⁻¹. Only the interpolation order differs.
    """
    rot, sx = math.radians(angle), math.radians(shear_x)
    a, b = math.cos(rot), -math.cos(rot) * math.tan(sx) - math.sin(rot)
    c, d = math.sin(rot), -math.sin(rot) * math.tan(sx) + math.cos(rot)
    h, w = orig_hw
    scale = np.diag([size / w, size / h])
    m = scale @ np.array([[a, b], [c, d]]) @ np.linalg.inv(scale)
    centre = np.full(2, (size - 1) / 2.0)
    return np.concatenate([m, (centre - m @ centre)[:, None]], axis=1)


def _jitter(values: tuple[float, float, float, float]) -> A.ColorJitter:
    """``ColorJitter`` with factors in [max(0, 1 - x), 1 + x] (hue ±x), applied always (torchvision's ranges)."""
    b, c, s, h = values
    return A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=1.0)


class ClipAugment:
    """The stage-2 augmentation of SAM 2 training (``sam2.1_hiera_b+_MOSE_finetune.yaml``), on S×S clips.

    Order: HorizontalFlip(hflip_p, whole clip) -> affine (rotation U(±degrees), x-shear U(±shear), whole clip;
    images bilinear with fill (123, 116, 103), masks nearest with 0) -> clip colour jitter (brightness, contrast,
    saturation, hue, one draw per clip) -> ToGray(grayscale_p, whole clip) -> per-frame colour jitter (frame_*, a
    new draw for every frame). SAM 2's values are the defaults; 0 disables a step.

    The frames arrive already resized to S×S; the affine's matrix (:func:`affine_matrix`) reproduces the geometry
    of SAM 2's affine at the original size. albumentations does the colour steps (frames 1..T-1 are
    ``additional_targets`` of frame 0, so the clip-level draw is shared). Every draw comes from ``seed``.
    """

    def __init__(
        self,
        image_size: int,
        hflip_p: float = 0.5,
        degrees: float = 25.0,
        shear: float = 20.0,
        brightness: float = 0.1,
        contrast: float = 0.03,
        saturation: float = 0.03,
        hue: float = 0.0,
        grayscale_p: float = 0.05,
        frame_brightness: float = 0.1,
        frame_contrast: float = 0.05,
        frame_saturation: float = 0.05,
        frame_hue: float = 0.0,
    ) -> None:
        self.image_size = image_size
        self.hflip_p, self.degrees, self.shear, self.grayscale_p = hflip_p, degrees, shear, grayscale_p
        self.jitter = (brightness, contrast, saturation, hue)
        self.frame_jitter = (frame_brightness, frame_contrast, frame_saturation, frame_hue)
        self._clip_pipelines: dict[int, A.Compose] = {}
        self._frame_pipeline = (A.Compose([_jitter(self.frame_jitter)]) if any(self.frame_jitter)
                                else None)

    @classmethod
    def identity(cls, image_size: int) -> ClipAugment:
        """No augmentation (validation, tests): frames and masks pass through unchanged."""
        return cls(image_size, hflip_p=0.0, degrees=0.0, shear=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, grayscale_p=0.0, frame_brightness=0.0, frame_contrast=0.0, frame_saturation=0.0)

    @property
    def has_geometry(self) -> bool:
        """True when the affine step can move pixels (what ``finish_clip`` tries once, then leaves out)."""
        return self.degrees > 0 or self.shear > 0

    def clip_pipeline(self, num_frames: int) -> A.Compose | None:
        """albumentations Compose of the clip-level colour steps for ``num_frames`` frames (cached); None if none."""
        if not any(self.jitter) and self.grayscale_p <= 0:
            return None
        if num_frames not in self._clip_pipelines:
            steps: list[A.BasicTransform] = []
            if any(self.jitter):
                steps.append(_jitter(self.jitter))
            if self.grayscale_p > 0:
                steps.append(A.ToGray(num_output_channels=3, p=self.grayscale_p))
            extra = {f"image{t}": "image" for t in range(1, num_frames)}
            self._clip_pipelines[num_frames] = A.Compose(steps, additional_targets=extra)
        return self._clip_pipelines[num_frames]

    def __call__(self, frames: Sequence[np.ndarray], masks: np.ndarray, seed: int,
                 orig_hw: tuple[int, int] | None = None, geometric: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Augment a clip with the parameters drawn from ``seed``.

        Args:
            frames: T uint8 (S, S, 3) frames.
            masks: uint8 (T, K, S, S) 0/1 object masks.
            seed: every draw (same seed, same parameters; ``geometric`` does not change the other draws).
            orig_hw: (H, W) of the source frames, for the affine's geometry (default: square).
            geometric: False leaves out the affine.
        Returns:
            uint8 (T, S, S, 3) frames; uint8 (T, K, S, S) masks.
        """
        rng = np.random.default_rng(int(seed))
        images = np.stack(frames)
        t, k, h, w = masks.shape
        if self.hflip_p > 0 and rng.random() < self.hflip_p:
            images, masks = images[:, :, ::-1], masks[..., ::-1]
        angle, shear = rng.uniform(-self.degrees, self.degrees), rng.uniform(-self.shear, self.shear)
        clip_seed, frame_seeds = int(rng.integers(2**31)), rng.integers(2**31, size=t)
        if geometric and self.has_geometry:
            m = affine_matrix(angle, shear, orig_hw or (h, w), self.image_size)
            images = np.stack([cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                              borderValue=AFFINE_FILL) for f in np.ascontiguousarray(images)])
            flat = np.ascontiguousarray(masks).reshape(t * k, h, w)
            masks = np.stack([cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                             borderValue=0) for x in flat]).reshape(t, k, h, w)
        images = np.ascontiguousarray(images)
        pipe = self.clip_pipeline(t)
        if pipe is not None:
            pipe.set_random_seed(clip_seed)
            out = pipe(image=images[0], **{f"image{i}": images[i] for i in range(1, t)})
            images = np.stack([out["image"]] + [out[f"image{i}"] for i in range(1, t)])
        if self._frame_pipeline is not None:
            for i in range(t):
                self._frame_pipeline.set_random_seed(int(frame_seeds[i]))
                images[i] = self._frame_pipeline(image=images[i])["image"]
        return images, np.ascontiguousarray(masks)


def as_augment(augment: ClipAugment | Mapping[str, Any] | None, image_size: int) -> ClipAugment:
    """A ``ClipAugment`` from an instance, a dict of its arguments (config ``data.augment``), or None (identity)."""
    if augment is None:
        return ClipAugment.identity(image_size)
    if isinstance(augment, ClipAugment):
        if augment.image_size != image_size:
            raise ValueError(f"ClipAugment is for {augment.image_size}² frames but the dataset's image_size is "
                             f"{image_size}")
        return augment
    return ClipAugment(image_size, **dict(augment))


def transform_spec(image_size: int) -> dict[str, Any]:
    """The deterministic part of the stage-1 image transform (:func:`resize_square` + :func:`build_augment`), read
    partly from the transform objects, so a change to the loader's pipeline changes the spec (and old caches are
    refused). The horizontal flip is described by the cached views instead. Raises ``ValueError`` if the pipeline
    holds a transform other than HorizontalFlip and Normalize: a random geometric or colour augmentation would change
    the teacher's input in every epoch, and a cache of fixed views could not follow it.
    """
    spec: dict[str, Any] = {"resize": {"function": "resize_square", "size": [int(image_size), int(image_size)],
                                       "aspect": "stretched", "image": "PIL bilinear"}}
    for t in build_augment(hflip_p=0.0).transforms:
        name = type(t).__name__
        if name == "HorizontalFlip":
            continue
        if name == "Normalize":
            # "normalize" (American) is a key of teacher-cache manifests already on disk: kept as written there
            spec["normalize"] = {"mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std],
                                 "max_pixel_value": float(t.max_pixel_value)}
        else:
            raise ValueError(f"the stage-1 transform (edgetam_train.data.transforms.build_augment) holds {name}: a "
                             "teacher cache supports only the deterministic resize/normalise plus the horizontal flip")
    return spec
