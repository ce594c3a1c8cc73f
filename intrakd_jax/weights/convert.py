"""Converts a PyTorch/safetensors checkpoint into an orbax checkpoint of the project's format.

``python -m intrakd_jax.weights.convert --arch=intrakd_pspnet --checkpoint=pspnet_46_6.pth.tar
--output=runs/released/pspnet``

writes ``<output>/checkpoints/<epoch>/`` (the model's ``params`` and ``batch_stats`` and the JSON
metadata a training stage writes: model name and arguments, class count, plus the source file and
its arch), so the converted model works wherever a stage checkpoint does, without PyTorch:
``--config.checkpoint=<output>`` for ``mode=evaluate``, ``--config.teacher.checkpoint=<output>``
for ``mode=distill`` (the config's teacher must then be the arch's model, as the ApolloScape
config's is for ``intrakd_pspnet``). The model reads the project's RGB input unless
``--channel_order=bgr``.

Exit status: 0 on success, 1 when the file cannot be read or does not fit the arch (an
``error:`` line naming the file), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import logging

from intrakd_jax import checkpointing
from intrakd_jax.weights.archs import ARCHS, get_arch
from intrakd_jax.weights.importer import CHANNEL_ORDERS, import_checkpoint
from intrakd_jax.weights.readers import WeightsError, read_checkpoint


def convert(
    checkpoint: str,
    arch: str,
    output: str,
    *,
    num_classes: int | None = None,
    channel_order: str = "rgb",
) -> dict[str, Any]:
    """Writes the orbax checkpoint (see module docstring) and returns its metadata.

    Raises:
      WeightsError: unreadable file, another arch, or ``output`` already holds checkpoints.
    """
    if os.path.isdir(os.path.join(output, checkpointing.LATEST_DIR)):
        raise WeightsError(f"{output} already holds checkpoints; choose another --output")
    ckpt = read_checkpoint(checkpoint)
    model, variables = import_checkpoint(
        ckpt, arch, num_classes=num_classes, channel_order=channel_order
    )
    spec = get_arch(arch)
    step = ckpt.meta.get("epoch", 0)
    step = step if isinstance(step, int) and step >= 0 else 0
    kwargs = {**spec.model_kwargs}
    if spec.flip_field:
        kwargs[spec.flip_field] = getattr(model, spec.flip_field)
    meta = {
        "stage": "imported",
        "model": spec.model,
        # The arguments that differ from the model's defaults, as a training stage's metadata
        # (building.check_checkpoint_model takes a missing argument as its default).
        "model_kwargs": json.loads(json.dumps(kwargs)),
        "num_classes": model.num_classes,
        "step": step,
        "arch": arch,
        "channel_order": channel_order,
        "source": os.path.abspath(checkpoint),
        "source_meta": ckpt.meta,
    }
    ckpts = checkpointing.StageCheckpoints(output, max_to_keep=1)
    ckpts.save(step, variables, meta, force=True)
    ckpts.wait()
    ckpts.close()
    logging.info("wrote %s/%s/%d", output, checkpointing.LATEST_DIR, step)
    return meta


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m intrakd_jax.weights.convert",
        description="PyTorch/safetensors checkpoint -> orbax checkpoint of the project's format",
    )
    parser.add_argument("--checkpoint", required=True, help=".pth, .pth.tar, .pt or .safetensors")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--output", required=True, help="folder of the converted checkpoint")
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: the checkpoint's classifier"
    )
    parser.add_argument("--channel_order", choices=CHANNEL_ORDERS, default="rgb")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse printed the help or the usage error
        return e.code if isinstance(e.code, int) else 2
    logging.set_verbosity(logging.INFO)
    try:
        meta = convert(
            args.checkpoint,
            args.arch,
            args.output,
            num_classes=args.num_classes,
            channel_order=args.channel_order,
        )
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.checkpoint} ({args.arch}) -> {args.output}: {meta['model']} with "
        f"{meta['num_classes']} classes, step {meta['step']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
