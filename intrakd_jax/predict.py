"""mode=predict: a checkpoint on your own images or video (placeholder, being written)."""

from __future__ import annotations

import ml_collections


def predict(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs ``config.checkpoint`` over ``config.predict.input``."""
    raise NotImplementedError("mode=predict")
