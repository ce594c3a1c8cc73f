"""Official metrics of the three benchmarks, their command lines, protocols and report writers.

Metric modules (numpy, OpenCV, scipy and Pillow; no TensorFlow, no jax), each with a command line
``python -m intrakd_jax.evaluation.<module>`` that scores predictions made anywhere:

* ``culane``: exact CULane F1 (with ``culane_lanes``: reading and spline, ``culane_raster``:
  drawing); ``prob2lines``: CULane probability maps to lanes;
* ``llamas``: official per-class pixel AP and the ``.json_<k>.png`` writer; ``llamas_lanes``:
  LLAMAS lane F1, ``.lines.txt`` and lane-regression formats;
* ``apolloscape``: official and 37-class mIoU, submission writer; ``tta``: multi-scale
  corner-crop test-time augmentation;
* ``segmentation``: IoU from a confusion matrix; ``report``: JSON and markdown; ``visualize``:
  overlays; ``protocols``: the batch job's per-dataset official outputs; ``cli`` and ``pool``:
  what the command lines share.

``device`` is the one jax module (the confusion matrix of the jitted eval step); nothing here
imports it. Only the report and IoU helpers are re-exported, so that ``python -m`` of a metric
module does not find it imported already.
"""

from intrakd_jax.evaluation.report import markdown_table, to_jsonable, write_report
from intrakd_jax.evaluation.segmentation import iou_from_confusion

__all__ = ["iou_from_confusion", "markdown_table", "to_jsonable", "write_report"]
