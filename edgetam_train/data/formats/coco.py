"""COCO instance annotations on disk: one json (``images``, ``annotations``; ``categories`` ignored) + an image folder.

Every instance is one object to segment, whatever its category. ``segmentation`` may be

* polygons: ``[[x0, y0, x1, y1, ...], ...]`` (each polygon at least 3 points; the parts are merged),
* uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}`` (``iscrowd`` annotations usually are),
* compressed RLE: ``{"size": [h, w], "counts": str}`` (as SA-1B).

pycocotools turns polygons and uncompressed RLEs into compressed RLEs (:func:`annotation_rle`); decoding and resizing
is :func:`edgetam_train.data.formats.rle.decode_resized`, as for SA-1B. ``iscrowd=1`` annotations are skipped
(``iscrowd="skip"``, the default: a crowd region is not one object) or used as objects (``"use"``).

:func:`read_coco` checks the whole json once, without decoding a mask: a file-level problem (unreadable json, no
``images`` / ``annotations`` list, an empty annotation list) raises an error naming the file and the key; a bad
annotation (polygon with < 3 points, RLE whose size disagrees with its image entry or whose runs do not cover it,
unknown ``image_id``, no segmentation, polygon points that are not finite or lie more than one image size outside the
image, polygons enclosing no area, ragged RLE counts) is left out, logged with the file, annotation id and problem,
and counted per reason; images without a usable annotation are left out. Two images sharing an ``id`` are an error
naming both file names (their annotations could not be told apart). Images missing on disk are found when read (the
dataset skips and counts them as SA-1B does).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from edgetam_train.data.formats.rle import rle_runs

log = logging.getLogger(__name__)

ISCROWD_CHOICES = ("skip", "use")
MAX_LOGGED = 10  # bad annotations logged one by one per file; the rest only counted
MAX_OUTSIDE = 1.0  # polygon points may lie this many image sizes outside the image (COCO has a few just outside)
MIN_POLYGON_AREA = 1e-6  # px^2: below it the polygons are lines or points and rasterise to an empty mask


@dataclass
class CocoImage:
    """One image entry with its usable annotations (dicts as in the json)."""

    file_name: str
    height: int
    width: int
    image_id: Any
    annotations: list[dict] = field(default_factory=list)


@dataclass
class CocoSet:
    """A checked COCO json: ``images`` that have at least one usable annotation, in json order.

    ``dropped``: reason -> count of annotations (``bad_annotation``, ``bad_rle``) and images (``no_masks``: no usable
    annotation; ``bad_json``: an image entry without file_name / height / width) left out; ``num_annotations``: how
    many annotations the json lists; ``crowd``: ``iscrowd`` annotations skipped by choice (not counted as bad).
    """

    path: Path
    images: list[CocoImage]
    num_annotations: int
    dropped: dict[str, int]
    crowd: int = 0

    @property
    def bad_annotations(self) -> int:
        """Annotations left out because they are malformed."""
        return self.dropped.get("bad_annotation", 0) + self.dropped.get("bad_rle", 0)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def polygon_problem(k: int, poly: Any, h: int, w: int) -> str | None:
    """What is wrong with polygon ``k`` of an h x w image, or None. Coordinates must be finite and at most one image
    size outside the image: pycocotools rasterises through C ints, and NaN or 1e300 crashes the process (a segfault
    that kills the DataLoader worker and names nothing), so they are refused here, before any decoding."""
    if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
        return f"polygon {k} is not a list of numbers"
    if len(poly) % 2 or len(poly) < 6:
        return f"polygon {k} has {len(poly) / 2:g} points (need >= 3 x, y pairs)"
    try:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # a json integer beyond float range
        xy = np.full((1, 2), np.inf)
    limits = np.asarray([w, h], dtype=np.float64)
    ok = (xy >= -limits * MAX_OUTSIDE).all(1) & (xy <= limits * (1 + MAX_OUTSIDE)).all(1)  # NaN fails both
    if not ok.all():
        bad = xy[~ok][0]
        return f"polygon {k} has the point ({bad[0]:g}, {bad[1]:g}): x, y must be finite numbers within one image " \
               f"size of the {w}x{h} image"
    return None


def polygons_area(seg: list[list[float]]) -> float:
    """Summed absolute shoelace area of checked polygons (0 when every polygon is a line or a point)."""
    total = 0.0
    for poly in seg:
        x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
        total += abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2
    return total


def annotation_problem(ann: dict, h: int, w: int) -> tuple[str, str] | None:
    """(skip reason, what is wrong) of a COCO annotation for an h x w image, or None when it can be decoded."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            return "bad_annotation", "empty polygon list"
        for k, poly in enumerate(seg):
            problem = polygon_problem(k, poly, h, w)
            if problem is not None:
                return "bad_annotation", problem
        if polygons_area(seg) < MIN_POLYGON_AREA:  # rasterises to nothing: an item with no object to train on
            return "bad_annotation", f"polygons enclose no area ({polygons_area(seg):g} px^2; points on one line)"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or list(size) != [h, w]:
            return "bad_rle", f"RLE size {size} != image size [{h}, {w}] (height, width of its image entry)"
        if isinstance(counts, list):
            # checked element by element: a ragged or nested list makes np.asarray raise, a huge int overflow
            if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= h * w for c in counts):
                return "bad_rle", f"uncompressed RLE counts must be a flat list of integers in [0, {h * w}]"
            if sum(counts) != h * w:
                return "bad_rle", f"uncompressed RLE counts sum to {sum(counts)}, need {h * w} (height x width)"
            return None
        if isinstance(counts, (str, bytes)):
            try:
                runs = rle_runs(counts)
            except ValueError as e:
                return "bad_rle", f"compressed RLE: {e}"
            if (runs < 0).any() or int(runs.sum()) != h * w:
                return "bad_rle", f"compressed RLE runs sum to {int(runs.sum())}, need {h * w}"
            return None
        return "bad_rle", f"RLE counts must be a list of ints or a string, got {type(counts).__name__}"
    return "bad_annotation", f"segmentation is {type(seg).__name__}, expected polygons or an RLE dict"


def _is_id(value: Any) -> bool:
    """An image id must be a json integer or string (a list is unhashable, a float compares unreliably)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def annotation_rle(ann: dict, h: int, w: int) -> dict:
    """Compressed RLE ``{"size": [h, w], "counts": bytes | str}`` of a checked annotation (polygons merged)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    return {"size": [h, w], "counts": seg["counts"]}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable json file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO json object with 'images' and 'annotations' lists")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: key '{key}' must be a list (COCO instances format), got "
                             f"{type(data.get(key)).__name__}")
    if not data["annotations"]:
        raise ValueError(f"{path}: 'annotations' is empty: there is no object to train or validate on")
    return data


def read_coco(path: str | Path, iscrowd: str = "skip") -> CocoSet:
    """Read and check a COCO instances json (module docstring); bad annotations and images are dropped and counted.

    Raises:
        FileNotFoundError / ValueError: the file is missing, not json, lacks the ``images`` / ``annotations`` lists,
            lists no annotation, or has no image with a usable annotation.
    """
    path = Path(path)
    if iscrowd not in ISCROWD_CHOICES:
        raise ValueError(f"iscrowd={iscrowd!r}: expected one of {ISCROWD_CHOICES}")
    data = _load_json(path)
    dropped: dict[str, int] = {}
    logged = 0

    def drop(reason: str, what: str) -> None:
        nonlocal logged
        dropped[reason] = dropped.get(reason, 0) + 1
        if logged < MAX_LOGGED:
            log.warning("%s: skipping %s (%s)", path, what, reason)
            logged += 1

    images: dict[Any, CocoImage] = {}
    for k, entry in enumerate(data["images"]):
        ok = isinstance(entry, dict) and isinstance(entry.get("file_name"), str) and \
            isinstance(entry.get("height"), int) and isinstance(entry.get("width"), int) and _is_id(entry.get("id"))
        if not ok:
            drop("bad_json", f"images[{k}]: needs id (an integer or a string), file_name, height and width")
            continue
        if entry["id"] in images:  # the annotations of both would land on one picture: refuse, never guess
            raise ValueError(f"{path}: image id {entry['id']!r} is used twice, by {images[entry['id']].file_name} and "
                             f"by {entry['file_name']} (images[{k}]); every image needs its own id")
        images[entry["id"]] = CocoImage(entry["file_name"], entry["height"], entry["width"], entry["id"])
    crowd = 0
    for k, ann in enumerate(data["annotations"]):
        ident = ann.get("id", f"#{k}") if isinstance(ann, dict) else f"#{k}"
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) and _is_id(ann.get("image_id")) else None
        if image is None:
            drop("bad_annotation", f"annotation {ident}: image_id "
                 f"{ann.get('image_id') if isinstance(ann, dict) else None!r} is not in 'images'")
            continue
        if ann.get("iscrowd", 0) and iscrowd == "skip":
            crowd += 1
            continue
        problem = annotation_problem(ann, image.height, image.width)
        if problem is not None:
            drop(problem[0], f"annotation {ident} of {image.file_name}: {problem[1]}")
            continue
        image.annotations.append(ann)
    kept = [im for im in images.values() if im.annotations]
    if len(images) > len(kept):
        dropped["no_masks"] = len(images) - len(kept)
    if logged < sum(v for r, v in dropped.items() if r != "no_masks"):
        log.warning("%s: %d more bad entries not listed; counts per reason %s", path,
                    sum(v for r, v in dropped.items() if r != "no_masks") - logged, dropped)
    if not kept:
        raise ValueError(f"{path}: no image has a usable annotation ({len(images)} images, "
                         f"{len(data['annotations'])} annotations; left out per reason: {dropped}, "
                         f"iscrowd skipped: {crowd})")
    return CocoSet(path, kept, len(data["annotations"]), dropped, crowd)
