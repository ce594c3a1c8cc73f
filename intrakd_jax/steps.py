"""Per-device train and eval steps: ``jax.shard_map`` programs over the ``data`` mesh, jitted.

Each device sees its slice of the batch. BatchNorm statistics are synced over ``data`` (the models
are built with ``bn_axis_name="data"``), the cross entropy's numerator and denominator are summed
over devices before dividing, and so are the per-pixel distillation terms' (the other terms are
means over equal shards, averaged over devices), so the loss and the gradients are those of the
whole global batch: one device and N devices give the same update.
Parameters enter the shard_map replicated, so jax sums their gradients over ``data`` itself.

The teacher's variables are a separate argument: frozen, never donated, never optimised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from intrakd_jax.evaluation.device import confusion_matrix
from intrakd_jax.losses.segmentation import weighted_cross_entropy_sums
from intrakd_jax.losses.terms import DistillSpec, distill_losses
from intrakd_jax.parallel import DATA_AXIS


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (which is the step).

    Attributes:
      step: int32 scalar, number of updates done.
      params: model parameters.
      batch_stats: BatchNorm running statistics.
      opt_state: optax state.
      rng: raw key data (uint32), so checkpoints hold plain arrays.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        """The model's variables: ``params`` and ``batch_stats``, as ``model.apply`` takes them."""
        return {"params": self.params, "batch_stats": self.batch_stats}


# Initialisation runs once: XLA's optimisation passes cost far more compile time than they save.
RUN_ONCE_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def run_once(fn: Callable[..., Any], *args: Any, out_shardings: Any = None) -> Any:
    """Jits and runs a function that is called once (e.g. initialisation) with a fast compile."""
    lowered = jax.jit(fn, out_shardings=out_shardings).lower(*args)
    return lowered.compile(compiler_options=RUN_ONCE_COMPILER_OPTIONS)(*args)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_hw: Sequence[int]
) -> TrainState:
    """Initialises a train state (call under ``jax.jit`` with replicated out_shardings)."""
    init_rng, state_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *image_hw, 3), jnp.float32)
    variables = model.init(init_rng, dummy, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_rng),
    )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    num_classes: int,
    class_weights: Sequence[float],
    ignore_label: int = 255,
    teacher: nn.Module | None = None,
    distill: DistillSpec | None = None,
    skip_nonfinite: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``step(state, teacher_vars, batch) -> (state, metrics)``, jitted, state donated.

    The objective is CE + the weighted distillation terms of ``distill``
    (``losses.terms.distill_losses``). The teacher runs once per step, outside the gradient, and
    only when a term needs it; SAD-only (or term-less) steps never call it.

    Args:
      model: the trained network, built with ``bn_axis_name=DATA_AXIS``.
      tx: its optimiser.
      mesh: the 1-D data mesh.
      num_classes: number of segmentation classes.
      class_weights: per-class cross-entropy weights.
      ignore_label: label value excluded from every loss.
      teacher: the frozen teacher network; required when ``distill.needs_teacher``, otherwise
        unused.
      distill: the distillation terms (``losses.terms.distill_spec_from_config``); None or no
        terms: plain training.
      skip_nonfinite: a step whose loss or gradient is not finite leaves parameters, BatchNorm
        statistics and optimiser state as they were (the step counter still advances, so the
        data order is unchanged); False: the update is applied whatever it holds.

    Returns:
      The jitted step. ``teacher_vars`` is ignored (pass ``{}`` or None) when no term needs the
      teacher. Metrics are replicated scalars: ``ce``, each term's unweighted value by name,
      ``loss`` (CE + weighted terms), ``grad_norm`` and ``nonfinite`` (1.0 when the loss or a
      gradient was NaN or infinite, else 0.0).

    Raises:
      ValueError: a term needs the teacher and ``teacher`` is None.
    """
    weights = jnp.asarray(class_weights, jnp.float32)
    distill = distill or DistillSpec()
    if distill.needs_teacher and teacher is None:
        raise ValueError(
            f"make_train_step: the distillation terms {list(distill.names)} include terms that "
            "need a teacher, but teacher is None"
        )
    run_teacher = distill.needs_teacher

    def per_device(state: TrainState, teacher_vars: Any, batch: dict[str, jax.Array]):
        images_bhwc, labels_bhw = batch["image"], batch["label"]
        key = jax.random.wrap_key_data(state.rng)
        # One dropout key per step for every device: the models' ChannelDropout draws each
        # image's mask from its index in the global batch, so the masks (and a resumed run) do
        # not depend on how many devices share the batch.
        dropout_key = jax.random.fold_in(key, state.step)
        t_logits, t_taps = None, None
        if run_teacher:
            # Once per step and outside loss_fn: the gradient never traces through the teacher.
            t_logits, t_taps = jax.lax.stop_gradient(
                teacher.apply(teacher_vars, images_bhwc, train=False)
            )

        def loss_fn(params):
            (logits, taps), new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images_bhwc,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            num, den = weighted_cross_entropy_sums(logits, labels_bhw, weights, ignore_label)
            num, den = jax.lax.psum((num, den), DATA_AXIS)
            ce = num / jnp.maximum(den, 1e-12)
            metrics = {"ce": ce}
            loss = ce
            if distill.terms:
                total, values = distill_losses(
                    distill,
                    logits,
                    taps,
                    t_logits,
                    t_taps,
                    labels_bhw,
                    state.step,
                    ignore_label=ignore_label,
                    axis_name=DATA_AXIS,
                )
                metrics.update(values)
                loss = loss + total
            metrics["loss"] = loss
            return loss, (metrics, new_vars["batch_stats"])

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        # The norm is NaN/inf when any gradient element is; the gradients are already summed over
        # the data axis, so every device takes the same decision.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        new = (params, batch_stats, opt_state)
        if skip_nonfinite:
            old = (state.params, state.batch_stats, state.opt_state)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1, params=new[0], batch_stats=new[1], opt_state=new[2]
        )
        return new_state, metrics

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(DATA_AXIS)),
        out_specs=(P(), P()),
    )
    return jax.jit(sharded, donate_argnums=(0,))


@functools.cache
def make_eval_step(
    model: nn.Module, mesh: Mesh, num_classes: int, ignore_label: int = 255
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Builds ``eval_step(variables, batch) -> (confusion (n, n) int32, probs_bhwk)``.

    Cached, so periodic and final evaluations of a stage share one compiled program.

    The confusion matrix is summed over devices; padded examples (``batch["mask"]`` False) and
    ignore pixels do not count. Probabilities stay sharded over ``data`` for the host-side AP.
    """

    def per_device(variables, batch):
        logits, _ = model.apply(variables, batch["image"], train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        preds = jnp.argmax(logits, axis=-1)
        conf = confusion_matrix(
            batch["label"], preds, num_classes, ignore_label=ignore_label, mask=batch["mask"]
        )
        return jax.lax.psum(conf, DATA_AXIS), probs

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=(P(), P(DATA_AXIS)),
    )
    return jax.jit(sharded)
