"""Image and mask transforms of both stages, in one place: the ImageNet constants, the resize, the stage-1 augmentation
(and the spec a teacher cache records of it), and the stage-2 clip augmentation with its normalise-and-pad.

Inference preprocessing (:mod:`edgetam_train.predictor.preprocess`) uses the same constants.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def resized_hw(h: int, w: int, image_size: int) -> tuple[int, int]:
    """(h', w') after ``A.LongestMaxSize(image_size)`` (its rounding): the valid region of the padded output."""
    scale = image_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def build_resize(image_size: int) -> A.LongestMaxSize:
    """Image resize: longest side to ``image_size``, area interpolation when shrinking (bilinear when enlarging)."""
    return A.LongestMaxSize(max_size=image_size, area_for_downscale="image", p=1.0)


def build_augment(image_size: int, hflip_p: float) -> A.Compose:
    """Joint image / multi-mask pipeline after resizing: HorizontalFlip(p) -> Normalize (ImageNet) -> PadIfNeeded.

    Padding goes to the bottom/right (``position="top_left"``) with 0 in the masks and 0 in the *normalised* image
    (SAM's convention: pad after normalising, so the padding is the mean colour). The output's
    ``applied_transforms`` lists what ran (it tells whether the flip happened; the teacher cache needs it).
    A teacher cache (``teacher_cache.transform_spec``) supports only these three transforms.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=hflip_p),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
            A.PadIfNeeded(image_size, image_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                          fill_mask=0),
        ],
        save_applied_params=True,
    )


def build_reference_transform(image_size: int, hflip_p: float) -> A.Compose:
    """The plain albumentations pipeline (LongestMaxSize -> HorizontalFlip -> Normalize -> PadIfNeeded) on full-size,
    row-major image and masks. For the same flip decision ``SA1BDataset`` produces exactly its output (checked in the
    tests) while decoding and resizing the masks one at a time in column-major order, which is faster.
    """
    augment = build_augment(image_size, hflip_p)
    return A.Compose([build_resize(image_size), *augment.transforms])


# Affine fill: the mean colour, so filled corners become ~0 after normalisation, like the padding.
MEAN_RGB: tuple[int, int, int] = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104)


class ClipAugment:
    """The stage-2 augmentation, identical on every frame of a clip (``normalize_pad`` then makes the tensors).

    Pipeline (albumentations, after the loaders resized the frames to longest side S): HorizontalFlip(hflip_p) ->
    Affine(rotate ±degrees, x-shear ±shear, bilinear, mean-colour fill; masks nearest, 0 fill) -> ColorJitter
    (brightness, contrast, saturation, hue) -> ToGray(grayscale_p). The paper's recipe is the default (hflip,
    affine 25° / shear 20, colour jitter 0.1, grayscale 0.05).

    Frames 1..T-1 are ``additional_targets`` of frame 0, so albumentations draws the parameters once per clip; every
    object mask of every frame rides along as one ``masks`` stack. The affine is applied after the resize rather than
    before (SAM 2's order): rotation and shear about the centre commute with an aspect-preserving resize, so only the
    interpolation differs, and the warp runs on S-sized instead of full-size frames.

    Args:
        image_size: output side S (``normalize_pad`` pads to it).
        hflip_p, degrees, shear, brightness, contrast, saturation, hue, grayscale_p: see above (0 disables a step).
    """

    def __init__(
        self,
        image_size: int,
        hflip_p: float = 0.5,
        degrees: float = 25.0,
        shear: float = 20.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        saturation: float = 0.1,
        hue: float = 0.0,
        grayscale_p: float = 0.05,
    ) -> None:
        self.image_size = image_size
        self.hflip_p, self.degrees, self.shear, self.grayscale_p = hflip_p, degrees, shear, grayscale_p
        self.jitter = (brightness, contrast, saturation, hue)
        self._pipelines: dict[tuple[int, bool], A.Compose] = {}

    @classmethod
    def identity(cls, image_size: int) -> ClipAugment:
        """No augmentation (validation, tests): frames and masks pass through unchanged."""
        return cls(image_size, hflip_p=0.0, degrees=0.0, shear=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, grayscale_p=0.0)

    @property
    def has_geometry(self) -> bool:
        """True when the affine step can move pixels (what ``finish_clip`` retries or leaves out)."""
        return self.degrees > 0 or self.shear > 0

    def pipeline(self, num_frames: int, geometric: bool = True) -> A.Compose:
        """The albumentations Compose for ``num_frames`` frames (cached); ``geometric=False`` leaves out the affine."""
        key = (num_frames, geometric and self.has_geometry)
        if key not in self._pipelines:
            steps: list[A.BasicTransform] = []
            if self.hflip_p > 0:
                steps.append(A.HorizontalFlip(p=self.hflip_p))
            if key[1]:
                steps.append(A.Affine(rotate=(-self.degrees, self.degrees),
                                      shear={"x": (-self.shear, self.shear), "y": (0.0, 0.0)},
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=MEAN_RGB, fill_mask=0, p=1.0))
            if any(self.jitter):
                b, c, s, h = self.jitter
                steps.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=1.0))
            if self.grayscale_p > 0:
                steps.append(A.ToGray(num_output_channels=3, p=self.grayscale_p))
            extra = {f"image{t}": "image" for t in range(1, num_frames)}
            self._pipelines[key] = A.Compose(steps, additional_targets=extra)
        return self._pipelines[key]

    def __call__(
        self, frames: Sequence[np.ndarray], masks: np.ndarray, seed: int, geometric: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment a clip with the parameters drawn from ``seed``.

        Args:
            frames: T uint8 (h, w, 3) frames of one size, h and w <= S.
            masks: uint8 (T, K, h, w) 0/1 object masks.
            seed: seeds albumentations' draw (same seed, same parameters).
            geometric: False leaves out the affine.
        Returns:
            uint8 (T, h, w, 3) frames; uint8 (T, K, h, w) masks.
        """
        t, k, h, w = masks.shape
        pipe = self.pipeline(len(frames), geometric)
        if not pipe.transforms:
            return np.stack(frames), masks
        pipe.set_random_seed(int(seed))
        inputs = {f"image{i}": frame for i, frame in enumerate(frames[1:], start=1)}
        out = pipe(image=frames[0], masks=masks.reshape(t * k, h, w), **inputs)
        images = np.stack([out["image"]] + [out[f"image{i}"] for i in range(1, len(frames))])
        return images, np.asarray(out["masks"]).reshape(t, k, h, w)


_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0


_STD_255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0


def normalize_pad(frames: np.ndarray, masks: np.ndarray, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (T, h, w, 3) frames and (T, K, h, w) masks -> float32 (T, 3, S, S) ImageNet-normalised frames and bool
    (T, K, S, S) masks, padded bottom/right with 0 (after normalisation: the mean colour; SAM's convention).

    Written straight into the padded channel-first tensors (one pass per frame, no float HWC intermediate).
    """
    t, h, w, _ = frames.shape
    images = torch.empty(t, 3, image_size, image_size)  # each element written once: padding zeroed, the rest copied
    images[:, :, h:].zero_()
    images[:, :, :h, w:].zero_()
    valid = images[:, :, :h, :w]
    valid.copy_(torch.from_numpy(frames).permute(0, 3, 1, 2))
    valid.sub_(_MEAN_255).div_(_STD_255)
    out_masks = torch.zeros(t, masks.shape[1], image_size, image_size, dtype=torch.bool)
    out_masks[:, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(masks)).view(torch.bool)
    return images, out_masks


def resize_frames(frames: Sequence[np.ndarray], image_size: int) -> list[np.ndarray]:
    """Each uint8 (H, W, 3) frame resized to longest side ``image_size`` (area when shrinking, as for SA-1B)."""
    resize = build_resize(image_size)
    return [resize(image=f)["image"] for f in frames]


def resize_label(label: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) integer map to ``out_hw`` (what resizing each object mask gives)."""
    if label.shape == tuple(out_hw):
        return label
    return cv2.resize(label, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)


def as_augment(augment: ClipAugment | Mapping[str, Any] | None, image_size: int) -> ClipAugment:
    """A ``ClipAugment`` from an instance, a dict of its arguments (config ``data.augment``), or None (identity)."""
    if augment is None:
        return ClipAugment.identity(image_size)
    if isinstance(augment, ClipAugment):
        if augment.image_size != image_size:
            raise ValueError(f"ClipAugment pads to {augment.image_size} but the dataset's image_size is {image_size}")
        return augment
    return ClipAugment(image_size, **dict(augment))


def transform_spec(image_size: int) -> dict[str, Any]:
    """The deterministic part of the stage-1 image transform (``sa1b.build_resize`` + ``build_augment``), read from
    the transform objects themselves, so a change to the loader's pipeline changes the spec (and old caches are
    refused). The horizontal flip is described by the cached views instead. Raises ``ValueError`` if the pipeline
    holds a transform other than HorizontalFlip, Normalize and PadIfNeeded: a random geometric or colour augmentation
    would change the teacher's input in every epoch, and a cache of fixed views could not follow it.
    """
    resize = build_resize(image_size)
    spec: dict[str, Any] = {"resize": {"transform": type(resize).__name__, "max_size": resize.max_size,
                                       "interpolation": int(resize.interpolation),
                                       "area_for_downscale": str(resize.area_for_downscale)}}
    for t in build_augment(image_size, hflip_p=0.0).transforms:
        name = type(t).__name__
        if name == "HorizontalFlip":
            continue
        if name == "Normalize":
            spec["normalize"] = {"mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std],
                                 "max_pixel_value": float(t.max_pixel_value)}
        elif name == "PadIfNeeded":
            spec["pad"] = {"size": [t.min_height, t.min_width], "position": str(t.position),
                           "border_mode": int(t.border_mode), "fill": float(t.fill)}
        else:
            raise ValueError(f"the stage-1 transform (edgetam_train.data.transforms.build_augment) holds {name}: a teacher "
                             "cache supports only the deterministic resize/normalise/pad plus the horizontal flip")
    return spec
