"""Running a model over a dataset split on every device: the one evaluation loop.

``evaluate_split`` is the loop that end-of-stage validation (``intrakd_jax.stage``) and the batch
evaluation job (``intrakd_jax.batch_eval``) both call: it runs the jitted eval step over the global
batches of a split (the last one padded and masked), sums the confusion matrix on device and hands
each batch, fetched to the host, to an optional per-batch consumer (LLAMAS pixel AP, the official
submission writers, overlays). ``make_predict_fn`` serves inputs of any shape (test-time
augmentation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from data_pipelines.util import ProgressLogger
from intrakd_jax import parallel, steps
from intrakd_jax.evaluation.llamas import PixelAPAccumulator
from intrakd_jax.evaluation.segmentation import iou_from_confusion

# Called with each global batch on the host: probs_bhwk, image, label, mask, index (numpy).
BatchConsumer = Callable[[dict[str, np.ndarray]], None]


def num_eval_batches(num_examples: int, batch_size: int, max_batches: int | None = None) -> int:
    """Global batches covering ``num_examples`` (the last one padded), at most ``max_batches``."""
    total = -(-num_examples // batch_size)
    return min(total, max_batches) if max_batches else total


def predict_split(
    eval_step, variables: Any, dataset, split: str, mesh, batch_size: int, num_batches: int
) -> Iterator[tuple[np.ndarray, dict, jax.Array]]:
    """Runs ``eval_step`` over the first ``num_batches`` global batches of ``split`` on ``mesh``.

    Every process reads its own slice of each global batch; padded rows carry ``mask`` False.

    Yields:
      ``(confusion_kk, global_batch, probs_bhwk)``: the batch's confusion matrix (int64 numpy,
      padded rows excluded), the global batch and the class probabilities on device.
    """
    batches = dataset.eval_batches(
        split,
        parallel.local_batch_size(batch_size, mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for batch in itertools.islice(batches, num_batches):
        gbatch = parallel.to_global(batch, mesh)
        batch_conf, probs = eval_step(variables, gbatch)
        yield np.asarray(jax.device_get(batch_conf), np.int64), gbatch, probs


def confusion_metrics(conf_kk: np.ndarray, class_names) -> dict:
    """mIoU, per-class IoU and pixel accuracy of a confusion matrix, plus IoU by class name."""
    metrics = iou_from_confusion(conf_kk)
    metrics["iou_by_class"] = dict(zip(class_names, metrics["iou"], strict=True))
    return metrics


def evaluate_split(
    model,
    variables: Any,
    dataset,
    split: str,
    mesh,
    batch_size: int,
    *,
    max_batches: int | None = None,
    desc: str = "eval",
    on_batch: BatchConsumer | None = None,
) -> dict:
    """Runs a model over a whole split and returns the confusion-matrix metrics.

    Args:
      model: the model built for evaluation (BatchNorm running statistics).
      variables: its ``params`` and ``batch_stats``.
      dataset: a ``data_pipelines`` dataset.
      split: the split to evaluate.
      mesh: the 1-D data mesh.
      batch_size: the global batch size; the last batch is padded and masked.
      max_batches: evaluate only the first global batches (None: the whole split).
      desc: the progress line's label.
      on_batch: called with every global batch fetched to the host (``probs`` plus the batch
        fields); None keeps the probabilities on device.

    Returns:
      ``miou``, ``iou``, ``iou_by_class``, ``pixel_accuracy``, ``num_batches``, ``num_images``
      and ``num_pixels`` (labelled pixels scored; 0 on an unlabelled test split).
    """
    info = dataset.info
    eval_step = steps.make_eval_step(model, mesh, info.num_classes, info.ignore_label)
    num_examples = dataset.num_examples(split)
    total = num_eval_batches(num_examples, batch_size, max_batches)
    num_images = min(num_examples, total * batch_size)
    progress = ProgressLogger(f"[{desc}] images", num_images, every_s=10.0)
    conf = np.zeros((info.num_classes, info.num_classes), np.int64)
    predictions = predict_split(eval_step, variables, dataset, split, mesh, batch_size, total)
    for i, (batch_conf, gbatch, probs) in enumerate(predictions):
        conf += batch_conf
        if on_batch is not None:
            on_batch(parallel.to_host({"probs": probs, **gbatch}))
        # Batch i holds examples i*B .. (i+1)*B - 1; only the last one is padded.
        progress.update(min(batch_size, num_images - i * batch_size))
    progress.finish()
    metrics = confusion_metrics(conf, info.class_names)
    metrics.update(num_batches=total, num_images=num_images, num_pixels=int(conf.sum()))
    return metrics


def evaluate_variables(
    model,
    variables: Any,
    dataset,
    split: str,
    mesh,
    batch_size: int,
    max_batches: int | None = None,
    desc: str = "eval",
) -> dict:
    """End-of-stage validation: ``evaluate_split`` plus LLAMAS's official pixel AP.

    Returns:
      ``evaluate_split``'s metrics and, on LLAMAS, the official per-class pixel AP (``ap``,
      ``map`` over the lane classes, ``map_all`` with background, ``pixel_ap``).
    """
    info = dataset.info
    ap = PixelAPAccumulator(info.num_classes, info.class_names) if info.name == "llamas" else None

    def accumulate(host: dict[str, np.ndarray]) -> None:
        ap.update(host["probs"], host["label"], host["mask"])

    metrics = evaluate_split(
        model,
        variables,
        dataset,
        split,
        mesh,
        batch_size,
        max_batches=max_batches,
        desc=desc,
        on_batch=accumulate if ap is not None else None,
    )
    if ap is not None:
        pixel_ap = ap.result()
        metrics["ap"] = {k: v["auc"] for k, v in pixel_ap["per_class"].items()}
        metrics["map"] = pixel_ap["map"]  # official AP averaged over the lane classes
        metrics["map_all"] = pixel_ap["map_all"]  # ... and with background
        metrics["pixel_ap"] = pixel_ap["per_class"]
    return metrics


def predict_examples(model, variables, dataset, split, mesh, batch_size: int) -> dict:
    """Predictions of the first eval batch: display images, labels and argmax class maps."""
    eval_step = steps.make_eval_step(
        model, mesh, dataset.info.num_classes, dataset.info.ignore_label
    )
    _, gbatch, probs = next(
        predict_split(eval_step, variables, dataset, split, mesh, batch_size, 1)
    )
    # The whole global batch on every process (other hosts' rows included).
    host = parallel.to_host({"probs": probs, **gbatch})
    keep = host["mask"]
    return {
        "image": host["image"][keep],
        "label": host["label"][keep],
        "pred": host["probs"].argmax(-1)[keep],
    }


def make_predict_fn(model, variables, mesh) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(images_bhwc) -> probs_bhwk`` (numpy) for arbitrary batch sizes and shapes.

    The batch is padded to a multiple of the device count and sharded over ``data``; each new
    input shape compiles once (test-time augmentation uses a handful).
    """
    num_devices = mesh.devices.size

    def per_device(variables, images):
        logits, _ = model.apply(variables, images, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    sharded = jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(P(), P(parallel.DATA_AXIS)),
            out_specs=P(parallel.DATA_AXIS),
        )
    )

    def predict(images_bhwc: np.ndarray) -> np.ndarray:
        images = np.asarray(images_bhwc, np.float32)
        n = images.shape[0]
        pad = -n % num_devices
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
        arr = jax.device_put(images, parallel.batch_sharded(mesh))
        return parallel.to_host(sharded(variables, arr))[:n]

    return predict
