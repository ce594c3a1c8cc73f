"""mode=explain: what IntRA-KD matches (placeholder, being written)."""

from __future__ import annotations

import ml_collections


def explain(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the AOI / affinity-graph figures for a few validation images."""
    raise NotImplementedError("mode=explain")
