"""The official optimiser: SGD with momentum, weight decay and poly learning rate (optax).

PyTorch ``SGD(lr, momentum, weight_decay)`` adds ``wd * param`` to the gradient before the momentum
trace, which is ``add_decayed_weights`` followed by ``sgd`` here. The poly schedule is
``lr * (1 - step / total) ** power`` per step. PSPNet trains its head (everything outside the
backbone) with ten times the backbone's rate, as in the official recipe.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

BACKBONE_PREFIXES = ("backbone",)


def poly_schedule(learning_rate: float, num_steps: int, power: float) -> optax.Schedule:
    """``learning_rate * (1 - step / num_steps) ** power``, reaching 0 at ``num_steps``."""
    return optax.polynomial_schedule(
        init_value=learning_rate, end_value=0.0, power=power, transition_steps=max(num_steps, 1)
    )


def _sgd(learning_rate: float, num_steps: int, momentum: float, weight_decay: float, power: float):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(poly_schedule(learning_rate, num_steps, power), momentum=momentum),
    )


def _with_clipping(tx: optax.GradientTransformation, clip_grad_norm: float):
    if not clip_grad_norm:
        return tx
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)


def param_groups(params: Any) -> Any:
    """Labels each parameter 'backbone' or 'head' by its top-level module name."""

    def label(path, _):
        top = str(getattr(path[0], "key", path[0])).lower()
        return "backbone" if top.startswith(BACKBONE_PREFIXES) else "head"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    params: Any,
    learning_rate: float,
    num_steps: int,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    poly_power: float = 0.9,
    head_lr_mult: float = 1.0,
    clip_grad_norm: float = 0.0,
) -> optax.GradientTransformation:
    """Builds the stage optimiser.

    Args:
      params: the parameter pytree (only its structure and names are used).
      learning_rate: base (backbone) learning rate.
      num_steps: length of the poly schedule.
      momentum: SGD momentum.
      weight_decay: L2 weight decay added to the gradient (PyTorch convention).
      poly_power: poly schedule exponent.
      head_lr_mult: rate multiplier for parameters outside ``backbone*`` modules (1 = one group).
      clip_grad_norm: clip the global gradient norm to this value first (0 = off, the official
        recipe).

    Returns:
      An optax transformation.
    """
    if head_lr_mult == 1.0:
        tx = _sgd(learning_rate, num_steps, momentum, weight_decay, poly_power)
        return _with_clipping(tx, clip_grad_norm)
    tx = optax.multi_transform(
        {
            "backbone": _sgd(learning_rate, num_steps, momentum, weight_decay, poly_power),
            "head": _sgd(
                learning_rate * head_lr_mult, num_steps, momentum, weight_decay, poly_power
            ),
        },
        param_groups(params),
    )
    return _with_clipping(tx, clip_grad_norm)
