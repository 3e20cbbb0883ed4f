"""DataLoader worker-process setup: OpenCV threads, image size limits and SIGINT (and making this process safe to
fork workers from)."""

from __future__ import annotations

import signal

import cv2

from edgetam_train.data.formats.images import set_image_limits


def init_worker(worker_id: int, max_image_pixels: int | None = None, min_image_side: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker (the workers already run in parallel), the image
    size limits (``data.max_image_pixels`` / ``data.min_image_side``, also under the spawn start method), and SIGINT
    ignored: Ctrl-C reaches the whole process group, and the training process decides (first Ctrl-C: save and exit,
    ``callbacks.sigterm_checkpoint``); the workers end when their DataLoader shuts them down."""
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_image_limits(max_image_pixels, min_image_side)


def fork_safe_opencv() -> None:
    """One OpenCV thread in this process before DataLoader workers are forked from it.

    When this process has run OpenCV with its thread pool (in-process loading: ``data.num_workers=0``, then a
    validation loader with workers), a forked worker inherits the pool's locked state without its threads, and its
    first OpenCV call (``init_worker``'s ``cv2.setNumThreads``) waits forever: validation hung with no message. With
    one thread the pool is shut down before the fork. Loading in this process is then single-threaded in OpenCV,
    which only matters with ``num_workers=0`` (debug runs)."""
    cv2.setNumThreads(1)
