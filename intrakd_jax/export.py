"""mode=export: deployable artifacts of a checkpoint (placeholder, being written)."""

from __future__ import annotations

import ml_collections


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the artifacts of ``config.export.formats`` for ``config.checkpoint``."""
    raise NotImplementedError("mode=export")
