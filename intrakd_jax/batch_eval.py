"""The batch evaluation job: checkpoints -> official-format predictions, metrics, reports.

``python main.py --config=configs/<dataset>.py --config.mode=evaluate
--config.checkpoint=runs/demo/distill[,runs/demo/student,...] [--config.eval.split=test]``

For every checkpoint (a stage directory, its ``best/`` or ``checkpoints/`` manager, one step
folder, or a PyTorch/safetensors file such as the released ``pspnet_46_6.pth.tar`` with
``--config.checkpoint_arch``; several separated by commas) the job runs the model over the whole
split on all devices (batch size ``config.eval_batch_size``, the last partial batch padded and
masked), writes into ``<workdir>/evaluate/<run>/<split>/``:

  report.json, report.md   mIoU at network resolution + the benchmark's official metrics
  overlays/                prediction coloured over the input, ground truth beside it
  predictions/, lines/ ... the official submission formats (see evaluation/protocols.py)

and, with several checkpoints, ``<workdir>/evaluate/summary_<split>.{json,md}`` side by side.
Process 0 writes files and computes the full-resolution metrics; every process runs the model.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
import numpy as np

from intrakd_jax import checkpointing, inference, models, parallel, weights
from intrakd_jax.evaluation import protocols, report, visualize
from intrakd_jax.evaluation import tta as tta_lib

EVAL_DIR = "evaluate"


def checkpoint_paths(value: str | None) -> list[str]:
    """Splits ``config.checkpoint`` (comma-separated paths) into a list.

    Raises:
      ValueError: nothing given.
    """
    paths = [p.strip() for p in (value or "").split(",") if p.strip()]
    if not paths:
        raise ValueError(
            "mode=evaluate needs --config.checkpoint=<stage dir, e.g. runs/demo/distill>; "
            "several checkpoints may be given separated by commas"
        )
    return paths


def run_name(path: str, step: int) -> str:
    """A folder name for one checkpoint: ``<stage>_step<N>`` (e.g. ``distill_step500``)."""
    parts = os.path.abspath(path).rstrip(os.sep).split(os.sep)
    # Skip the manager/step components to reach the stage directory's name.
    while len(parts) > 1 and (
        parts[-1].isdigit() or parts[-1] in (checkpointing.BEST_DIR, checkpointing.LATEST_DIR)
    ):
        parts.pop()
    parts[-1] = weights.checkpoint_stem(parts[-1])  # pspnet_46_6.pth.tar -> pspnet_46_6
    stage = re.sub(r"[^A-Za-z0-9_.-]+", "_", parts[-1]) or "checkpoint"
    return f"{stage}_step{step}"


def _overlay_row(image_hwc, label_hw, pred_hw, data_config, num_classes: int) -> np.ndarray:
    img = visualize.denormalize(image_hwc, data_config.mean_rgb, data_config.std_rgb)
    return visualize.grid(
        [[visualize.overlay(img, pred_hw, num_classes), visualize.colorize(label_hw, num_classes)]],
        ["prediction", "ground truth"],
    )


def official_tta_geometry(model) -> tuple[int, int]:
    """(official test size, crop multiple) of a model for the ApolloScape test-time augmentation.

    PSPNet: the released PSPNet script's 1410 (crops 470 x 1410), any input size; the other
    models: the ERFNet script's 1440 (480 x 1440), crops divisible by the output stride 8.
    """
    if isinstance(model, models.PSPNet):
        return tta_lib.PSPNET_TEST_SIZE, 1
    return tta_lib.ERFNET_TEST_SIZE, 1 if isinstance(model, models.ResNetStudent) else 8


def _examples(dataset, split: str) -> list:
    getter = getattr(dataset, "examples", None)
    return list(getter(split) if callable(getter) else dataset._examples(split))


def _protocol_context(
    ecfg: ml_collections.ConfigDict, dataset, split: str, model, out_dir: str
) -> protocols.ProtocolContext:
    """What the dataset's official protocol needs to know about the split and the eval config."""
    info = dataset.info
    test_size, multiple = official_tta_geometry(model)
    return protocols.ProtocolContext(
        split=split,
        out_dir=out_dir,
        data_dir=getattr(dataset, "data_dir", ""),
        class_names=tuple(info.class_names),
        source_hw=tuple(dataset.source_image_hw(split)),
        crop_top=dataset.options.crop_top,
        network_hw=tuple(info.image_hw),
        mean_rgb=tuple(dataset.options.mean_rgb),
        std_rgb=tuple(dataset.options.std_rgb),
        write_predictions=bool(ecfg.get("write_predictions", True)),
        exist_min_fraction=float(ecfg.get("exist_min_fraction", 0.0005)),
        tta=ecfg.get("tta", "none") or "none",
        tta_test_size=int(ecfg.get("tta_test_size") or test_size),
        tta_multiple=multiple,
        include_void=bool(ecfg.get("include_void", True)),
        workers=ecfg.get("workers"),
    )


def evaluate_one(
    config: ml_collections.ConfigDict,
    dataset,
    split: str,
    model,
    variables: Any,
    mesh,
    out_dir: str,
) -> dict[str, Any]:
    """Evaluates one set of model variables on ``split`` into ``out_dir`` (see module docstring).

    Returns:
      The metrics: ``miou``, per-class ``iou`` (network resolution) and the protocol's official
      metrics.
    """
    info = dataset.info
    examples = _examples(dataset, split)
    ecfg = config.eval
    ctx = _protocol_context(ecfg, dataset, split, model, out_dir)
    lead = parallel.is_lead_process()
    predict_fn = inference.make_predict_fn(model, variables, mesh) if ctx.tta != "none" else None
    protocol = protocols.get_protocol(info.name, ctx, predict_fn)
    num_overlays = int(ecfg.get("num_overlays", 16))
    if lead:
        os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)

    written = 0

    def consume(host: dict[str, np.ndarray]) -> None:
        nonlocal written
        if not lead:
            return
        for j in np.flatnonzero(host["mask"]):
            ex = examples[int(host["index"][j])]
            protocol.add(ex.key, ex.image_path, ex.label_path, host["probs"][j])
            if num_overlays < 0 or written < num_overlays:
                row = _overlay_row(
                    host["image"][j],
                    host["label"][j],
                    host["probs"][j].argmax(-1),
                    config.data,
                    info.num_classes,
                )
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ex.key) + ".png"
                visualize.save_png(os.path.join(out_dir, "overlays", name), row)
                written += 1

    metrics = inference.evaluate_split(
        model,
        variables,
        dataset,
        split,
        mesh,
        config.eval_batch_size,
        max_batches=ecfg.max_batches,
        desc=f"evaluate {os.path.basename(out_dir)}",
        on_batch=consume,
    )
    tables = {}
    if metrics["num_pixels"]:  # an unlabelled split (a test set) has no pixels to score here
        tables["mIoU at network resolution"] = report.markdown_table(
            [{"class": n, "IoU": v} for n, v in metrics["iou_by_class"].items()]
            + [{"class": "**mean**", "IoU": metrics["miou"]}],
            ["class", "IoU"],
        )
    if lead:
        official, official_tables = protocol.finish()
        metrics.update(official)
        tables.update(official_tables)
        report.write_report(out_dir, "report", metrics, tables)
    return metrics


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per checkpoint: mIoU and the headline official numbers that are present."""
    rows = []
    for name, m in results.items():
        row = {"checkpoint": name, "mIoU": m["miou"]}
        if "map" in m:
            row["pixel mAP"] = m["map"]
        if "lane_f1" in m:
            row["lane F1"] = m["lane_f1"]["f1"]
        if "culane_f1" in m:
            row["CULane F1"] = m["culane_f1"]["f1"]
        if "official" in m:
            row["official mIoU"] = m["official"]["miou"]
        rows.append(row)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    for r in rows:
        for c in columns:
            r.setdefault(c, float("nan"))
    return report.markdown_table(rows, columns, float_fmt="{:.4f}")
