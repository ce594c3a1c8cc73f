"""Evaluation metrics: confusion-matrix IoU, the official LLAMAS pixel AP, report writers."""

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
