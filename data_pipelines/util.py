"""Small generic helpers shared by the data layer, the training code and the benchmarks.

Progress/ETA logging, atomic file writes and fast PNG encoding. numpy, OpenCV and absl only:
importing this module loads neither TensorFlow nor jax.
"""

from __future__ import annotations

import os
import tempfile
import time

import cv2
import numpy as np
from absl import logging


class ProgressLogger:
    """Logs ``done/total``, rate and ETA at most every ``every_s`` seconds (absl logging)."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        """Starts the clock for ``total`` units of work described by ``what``."""
        self.what = what
        self.total = total
        self.every_s = every_s
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start

    def update(self, n: int = 1) -> None:
        """Records ``n`` finished units; logs when the interval has passed."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            elapsed = now - self._start
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logging.info(
                "%s: %d/%d (%.1f%%), %.1f/s, elapsed %s, ETA %s",
                self.what,
                self.done,
                self.total,
                100.0 * self.done / max(self.total, 1),
                rate,
                format_seconds(elapsed),
                format_seconds(eta),
            )

    def finish(self) -> None:
        """Logs the final count and total time."""
        logging.info(
            "%s: %d/%d done in %s",
            self.what,
            self.done,
            self.total,
            format_seconds(time.monotonic() - self._start),
        )


def format_seconds(s: float) -> str:
    """Durations for progress lines: ``4m05s`` or ``1h02m03s``."""
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def write_file_atomic(path: str, data: bytes) -> None:
    """Writes via a temp file in the same folder + ``os.replace``: readers never see half a file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600 files; give the data the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def encode_png(img: np.ndarray, photo: bool = False) -> bytes:
    """Encodes an image as PNG, tuned for speed.

    Args:
      img: uint8 image (H, W) or (H, W, 3) BGR.
      photo: noisy photographs compress best (and ~3x faster) with the SUB filter and
        Huffman-only deflate; flat label maps with run-length encoding and no filter.

    Returns:
      The PNG bytes.
    """
    if photo:
        strategy, png_filter = cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, cv2.IMWRITE_PNG_FILTER_SUB
    else:
        strategy, png_filter = cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER_NONE
    params = [
        cv2.IMWRITE_PNG_COMPRESSION, 1,
        cv2.IMWRITE_PNG_STRATEGY, strategy,
        cv2.IMWRITE_PNG_FILTER, png_filter,
    ]  # fmt: skip
    ok, buf = cv2.imencode(".png", img, params)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.tobytes()
