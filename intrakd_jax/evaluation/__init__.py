"""Evaluation metrics, official protocols and report writers.

Modules: ``segmentation`` (confusion matrix, IoU), ``llamas`` (official per-class pixel AP and the
``.json_<k>.png`` writer), ``llamas_lanes`` (LLAMAS lane F1, ``.lines.txt``), ``culane`` (exact
CULane F1 and its command line), ``prob2lines`` (CULane probability maps to lanes),
``apolloscape`` (official and 37-class mIoU, submission writer), ``tta`` (multi-scale corner-crop
test-time augmentation), ``report`` (JSON/markdown), ``visualize`` (overlays and grids). The
common ones are re-exported here; import the protocol modules directly.
"""

from intrakd_jax.evaluation.llamas import (
    THRESHOLDS_DESC,
    PixelAPAccumulator,
    binary_approx_auc,
    quantize_probabilities,
    write_llamas_probability_pngs,
)
from intrakd_jax.evaluation.report import markdown_table, to_jsonable, write_report
from intrakd_jax.evaluation.segmentation import confusion_matrix, iou_from_confusion

__all__ = [
    "THRESHOLDS_DESC",
    "PixelAPAccumulator",
    "binary_approx_auc",
    "confusion_matrix",
    "iou_from_confusion",
    "markdown_table",
    "quantize_probabilities",
    "to_jsonable",
    "write_llamas_probability_pngs",
    "write_report",
]
