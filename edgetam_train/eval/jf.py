"""J&F for video object segmentation: region similarity J (IoU) and boundary F-measure, DAVIS 2017 / SA-V protocols.

Measures (the DAVIS 2017 definitions, re-implemented):

* J = |G ∩ P| / |G ∪ P|; 1 when both masks are empty (so an empty prediction of an absent object scores 1, a
  non-empty one 0).
* F: the boundary maps of G and P (:func:`seg2bmap`: a pixel is boundary when it differs from its east, south or
  south-east neighbour; the last row / column compare only along themselves; the corner pixel never is), each dilated
  by a disk of radius ``ceil(0.008 * image diagonal)`` pixels (:func:`boundary_radius`; 8 px at 480 x 854);
  precision = matched P-boundary pixels / P-boundary pixels, recall likewise for G; F = 2PR / (P + R). Empty
  boundaries: both empty -> P = R = 1 (F = 1); only P empty -> P = 1, R = 0 (F = 0); only G empty -> F = 0.

Folder layouts (auto-detected per GT video; the prediction folder must have the same one):

* DAVIS / MOSE / YouTube-VOS: ``<root>/<video>/<frame>.png``, one palette (or grayscale) PNG per frame whose pixel
  value is the object id (0 background; 255 in the GT = void, counted as background as the DAVIS loader does; in a
  prediction 255 is an object id, so 0/255 binary masks belong in the SA-V layout).
* SA-V: ``<root>/<video>/<object>/<frame>.png``, one binary PNG per object and frame (any value > 0 = object), as
  in ``Annotations_6fps``.

Frames are the GT PNGs of a video (SA-V annotates every 4th frame; prediction PNGs of other frames are ignored).
A GT frame without a prediction PNG, or with a different size, is an error naming the video and frame.

Protocols (both skip the first and the last annotated frame, as the official semi-supervised evaluations do):

* ``davis`` (``davis2017-evaluation``): objects are 1..(largest id in the first GT frame) for palette folders, the
  object folders for SA-V folders; each is scored on every remaining frame. A prediction id above the GT's objects
  is an error (the official code also stops); an object the prediction never contains scores as empty.
* ``sav`` (SA-V ``sav_benchmark.py`` / vos-benchmark): per object, frames before it first appears (in the GT or
  the prediction) are not scored, and objects absent from the GT on every scored frame are left out.

Per object: J and F = means over its scored frames. Dataset: J and F = means over all objects (of all videos),
J&F = (J + F) / 2. All values are fractions in [0, 1] (the papers print them x 100).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PROTOCOLS = ("davis", "sav")
BOUND_TH = 0.008
VOID_ID = 255


# ----------------------------------------------------------------------------------------------- measures

def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J of two (H, W) boolean masks: intersection over union, 1.0 when both are empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map (H, W) bool of a (H, W) mask, the DAVIS ``seg2bmap`` rule.

    A pixel is boundary when its value differs from its east, south or south-east neighbour; the last row compares
    only with its east neighbour, the last column only with its south neighbour, and the bottom-right pixel is never
    boundary. (Boundaries lie half a pixel towards the origin from the true edge.)
    """
    m = mask.astype(bool)
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    bmap = (m ^ east) | (m ^ south) | (m ^ south_east)
    bmap[-1, :] = m[-1, :] ^ east[-1, :]
    bmap[:, -1] = m[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_radius(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Boundary tolerance in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th * hypot(H, W))``."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: 1 where x^2 + y^2 <= r^2 (the structuring element of the DAVIS F measure)."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).astype(np.uint8)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F of two (H, W) masks (module docstring): boundaries matched within a disk of :func:`boundary_radius`."""
    gt_b, pred_b = seg2bmap(gt), seg2bmap(pred)
    n_gt, n_pred = int(np.count_nonzero(gt_b)), int(np.count_nonzero(pred_b))
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0  # one of precision / recall is 0
    kernel = disk(boundary_radius(gt.shape, bound_th))
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------------- folders

@dataclass
class ObjectScore:
    """J and F of one object of one video, averaged over its ``frames`` scored frames."""

    video: str
    object: str
    frames: int
    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass
class JFResult:
    """All objects' scores and the dataset means (fractions in [0, 1]); ``left_out``: GT videos not scored because
    they have no prediction folder (only with ``allow_missing``)."""

    objects: list[ObjectScore]
    left_out: list[str] = field(default_factory=list)

    @property
    def j(self) -> float:
        return float(np.mean([o.j for o in self.objects])) if self.objects else float("nan")

    @property
    def f(self) -> float:
        return float(np.mean([o.f for o in self.objects])) if self.objects else float("nan")

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def summary(self) -> str:
        """``J&F=0.8123 J=0.7900 F=0.8346``."""
        return f"J&F={self.jf:.4f} J={self.j:.4f} F={self.f:.4f}"


class EvalError(ValueError):
    """A GT / prediction folder problem; the message names the video and the frame."""


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_png(path: Path, video: str, frame: str, what: str) -> np.ndarray:
    """(H, W) integer array of a palette / grayscale PNG (an RGB PNG is an error naming ``video`` and ``frame``)."""
    if not path.is_file():
        raise EvalError(f"video {video!r} frame {frame!r}: {what} mask {path} is missing")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1", "I", "I;16"):
            raise EvalError(f"video {video!r} frame {frame!r}: {what} mask {path} has mode {im.mode}; expected a "
                            f"palette or grayscale PNG (pixel value = object id)")
        return np.asarray(im).astype(np.int64)


def _pair(gt_path: Path, pred_path: Path, video: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    gt = read_png(gt_path, video, frame, "GT")
    pred = read_png(pred_path, video, frame, "predicted")
    if gt.shape != pred.shape:
        raise EvalError(f"video {video!r} frame {frame!r}: predicted mask {pred_path} is {pred.shape[1]}x"
                        f"{pred.shape[0]} but the GT {gt_path} is {gt.shape[1]}x{gt.shape[0]} (W x H)")
    return gt, pred


class _Accumulator:
    """Per-object J / F lists of one video, fed one frame at a time (so no video is held in memory).

    ``davis``: every object in ``fixed_ids`` is scored on every frame. ``sav``: an object is scored from the first
    frame where it appears in the GT or the prediction on, and reported only if it appears in the GT.
    """

    def __init__(self, protocol: str, bound_th: float, fixed_ids: Sequence[str] | None = None) -> None:
        self.protocol, self.bound_th = protocol, bound_th
        self.j: dict[str, list[float]] = {k: [] for k in fixed_ids or []}
        self.f: dict[str, list[float]] = {k: [] for k in fixed_ids or []}
        self.in_gt: set[str] = set()

    def add(self, obj: str, gt: np.ndarray, pred: np.ndarray) -> None:
        """Score one object on one frame (boolean (H, W) masks)."""
        gt_any = bool(gt.any())
        if self.protocol == "sav" and obj not in self.j and not (gt_any or pred.any()):
            return  # not seen yet
        if gt_any:
            self.in_gt.add(obj)
        self.j.setdefault(obj, []).append(region_similarity(gt, pred))
        self.f.setdefault(obj, []).append(boundary_f(gt, pred, self.bound_th))

    def scores(self, video: str) -> list[ObjectScore]:
        out = []
        for obj, js in sorted(self.j.items(), key=lambda item: (not item[0].isdigit(), item[0].zfill(12))):
            if not js or (self.protocol == "sav" and obj not in self.in_gt):
                continue
            out.append(ObjectScore(video, obj, len(js), float(np.mean(js)), float(np.mean(self.f[obj]))))
        return out


def evaluate_video(gt_dir: str | Path, pred_dir: str | Path, video: str, protocol: str = "davis",
                   bound_th: float = BOUND_TH, skip_first_last: bool = True) -> list[ObjectScore]:
    """Scores of every object of ``video`` under ``protocol`` ("davis" or "sav"; see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    gt_video, pred_video = Path(gt_dir) / video, Path(pred_dir) / video
    if not pred_video.is_dir():
        raise EvalError(f"video {video!r}: no prediction folder {pred_video}")
    objects = _subdirs(gt_video)
    if objects:  # SA-V layout: one binary PNG per object and frame
        acc = _Accumulator(protocol, bound_th, objects if protocol == "davis" else None)
        for obj in objects:
            if not (pred_video / obj).is_dir():
                raise EvalError(f"video {video!r}: no prediction folder for object {obj!r} ({pred_video / obj})")
            frames = _pngs(gt_video / obj)
            for frame in frames[1:-1] if skip_first_last else frames:
                gt, pred = _pair(gt_video / obj / frame, pred_video / obj / frame, video, f"{obj}/{frame}")
                acc.add(obj, gt > 0, pred > 0)
        return acc.scores(video)
    frames = _pngs(gt_video)
    if not frames:
        raise EvalError(f"video {video!r}: no GT PNGs (and no object folders) in {gt_video}")
    first = read_png(gt_video / frames[0], video, frames[0], "GT")
    pairs = ((frame, *_pair(gt_video / frame, pred_video / frame, video, frame))
             for frame in (frames[1:-1] if skip_first_last else frames))
    return score_label_frames(video, pairs, num_label_objects(first), protocol, bound_th)


def num_label_objects(first_gt: np.ndarray) -> int:
    """Objects of a palette-layout video: the largest id (void 255 excluded) of its first GT frame (H, W)."""
    return int(first_gt[first_gt != VOID_ID].max(initial=0))


def score_label_frames(video: str, frames: Iterable[tuple[str, np.ndarray, np.ndarray]], num_objects: int,
                       protocol: str = "davis", bound_th: float = BOUND_TH) -> list[ObjectScore]:
    """Scores of every object of one video from in-memory label maps (the palette layout of the module docstring).

    Args:
        video: name used in the scores and error messages.
        frames: (frame name, GT (H, W) int ids with 255 = void, prediction (H, W) int ids) of every scored frame
            (the caller drops the first and last frames when the protocol wants it); read lazily, one at a time.
        num_objects: objects 1..num_objects of the video (:func:`num_label_objects` of its first GT frame).
        protocol / bound_th: as :func:`evaluate_video`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    fixed = [str(i) for i in range(1, num_objects + 1)] if protocol == "davis" else None
    acc = _Accumulator(protocol, bound_th, fixed)
    for frame, gt, pred in frames:
        gt = np.where(gt == VOID_ID, 0, gt)  # DAVIS void band: background (as the DAVIS loader does); pred keeps 255
        present = set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
        present.discard(0)
        if protocol == "davis":
            extra = sorted(i for i in present if i > num_objects)
            if extra:
                hint = (" (a 0/255 binary PNG? this layout wants palette PNGs whose value is the object id)"
                        if VOID_ID in extra else "")
                raise EvalError(f"video {video!r} frame {frame!r}: predicted object id(s) {extra} but the first GT "
                                f"frame has objects 1..{num_objects}{hint}")
            ids = range(1, num_objects + 1)
        else:
            ids = sorted(present | {int(k) for k in acc.j})
        for obj in ids:
            acc.add(str(obj), gt == obj, pred == obj)
    return acc.scores(video)


def split_videos(gt_dir: str | Path, pred_dir: str | Path) -> tuple[list[str], list[str]]:
    """(GT video folders that have a prediction folder, GT video folders that have none), both sorted; raises
    :class:`EvalError` when a root is missing or the GT has no video folders."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for root, what in ((gt_dir, "GT"), (pred_dir, "prediction")):
        if not root.is_dir():
            raise EvalError(f"{what} folder {root} does not exist")
    videos = _subdirs(gt_dir)
    if not videos:
        raise EvalError(f"GT folder {gt_dir} has no video folders")
    missing = [v for v in videos if not (pred_dir / v).is_dir()]
    return [v for v in videos if v not in set(missing)], missing


def _evaluate_one(job: tuple) -> list[ObjectScore]:
    return evaluate_video(*job)


def evaluate(gt_dir: str | Path, pred_dir: str | Path, protocol: str = "davis", bound_th: float = BOUND_TH,
             skip_first_last: bool = True, workers: int = 1, progress: bool = True,
             videos: Iterable[str] | None = None, allow_missing: bool = False) -> JFResult:
    """J&F of a prediction folder against a GT folder (layouts and protocols: module docstring).

    Args:
        gt_dir / pred_dir: roots holding one folder per video.
        protocol: "davis" or "sav".
        bound_th: boundary tolerance (fraction of the diagonal, or pixels when >= 1).
        skip_first_last: drop the first and the last annotated frame (both official protocols do).
        workers: processes (1 = in this process).
        progress: show a tqdm bar over videos.
        videos: evaluate only these GT video folders (default: every GT video folder; a name the GT lacks is an
            error); without ``allow_missing`` each needs a prediction folder.
        allow_missing: score only the GT videos that have a prediction folder (the others are listed in
            ``JFResult.left_out``) instead of raising :class:`EvalError`; at least one must have one.
    """
    from tqdm import tqdm

    names, missing = split_videos(gt_dir, pred_dir)
    if videos is not None:
        chosen = list(dict.fromkeys(videos))
        unknown = [v for v in chosen if v not in set(names) | set(missing)]
        if unknown:
            raise EvalError(f"{len(unknown)} listed video(s) have no GT folder in {gt_dir}: {unknown[:20]}")
        names, missing = [v for v in chosen if v in set(names)], [v for v in chosen if v in set(missing)]
    if missing and not allow_missing:
        raise EvalError(f"{len(missing)} GT video(s) have no prediction folder in {pred_dir}: {missing[:20]} "
                        "(--allow-missing scores only the predicted videos)")
    left_out = missing
    if not names:
        raise EvalError(f"none of the {len(left_out)} GT videos of {gt_dir} has a prediction folder in {pred_dir}")
    jobs = [(str(gt_dir), str(pred_dir), v, protocol, bound_th, skip_first_last) for v in names]
    bar = dict(total=len(jobs), desc=f"J&F ({protocol})", unit="video", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per_video = list(tqdm(pool.map(_evaluate_one, jobs), **bar))
    else:
        per_video = [_evaluate_one(job) for job in tqdm(jobs, **bar)]
    return JFResult([score for scores in per_video for score in scores], left_out)


def write_csv(result: JFResult, path: str | Path) -> Path:
    """One row per video and object: ``video,object,frames,J&F,J,F`` (fractions, 4 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "object", "frames", "J&F", "J", "F"])
        for o in result.objects:
            writer.writerow([o.video, o.object, o.frames, f"{o.jf:.4f}", f"{o.j:.4f}", f"{o.f:.4f}"])
    return path
