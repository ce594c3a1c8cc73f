"""Building blocks shared by the models."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn


def batch_norm(module: Any, train: bool) -> functools.partial:
    """A BatchNorm factory configured from a model's ``bn_*`` and ``dtype`` fields.

    Training mode uses batch statistics synced over ``module.bn_axis_name`` (the data axis inside
    the shard_map step); evaluation uses the running averages.
    """
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=module.bn_momentum,
        epsilon=module.bn_epsilon,
        axis_name=module.bn_axis_name,
        dtype=module.dtype,
    )
