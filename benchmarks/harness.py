"""Set-up shared by the benchmark scripts: a student train state with its jitted step, the
frozen teacher's variables, and the IntRA-KD loss-and-gradient program on random taps.

Imported by the scripts in this folder (which put it on ``sys.path`` by being run from it).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from intrakd_jax import building, optim, parallel, steps
from intrakd_jax.losses import terms
from intrakd_jax.losses.intra_kd import multi_tap_intra_kd_loss


def build_models(config, num_classes: int, dtype) -> tuple:
    """``(student for training, student for evaluation, teacher)`` from a config's model fields."""
    s = config.student
    s_kw = building.model_kwargs(s)
    return (
        building.build_model(s.model, s_kw, num_classes, dtype, True),
        building.build_model(s.model, s_kw, num_classes, dtype, False),
        building.build_teacher(config, num_classes, dtype),
    )


def intra_kd_term(config, eval_student, teacher) -> terms.IntraKD:
    """The config's IntRA-KD term (``config.distill.intra_kd``), taps resolved for these models."""
    spec = terms.distill_spec_from_config(
        config.distill, config.student.num_train_steps, eval_student, teacher
    )
    (term,) = (t for t in spec.terms if isinstance(t, terms.IntraKD))
    return term


def init_teacher(teacher, hw: Sequence[int], mesh) -> dict:
    """The teacher's variables (seed 1), replicated over ``mesh``."""
    dummy = jnp.zeros((1, *hw, 3))
    return steps.run_once(
        lambda k: teacher.init(k, dummy), jax.random.key(1), out_shardings=parallel.replicated(mesh)
    )


def student_state_and_step(
    student,
    eval_student,
    hw: Sequence[int],
    mesh,
    class_weights: Sequence[float],
    learning_rate: float,
    num_train_steps: int,
    teacher=None,
    distill: terms.DistillSpec | None = None,
):
    """A fresh student train state (seed 0, replicated) and the project's jitted train step.

    With ``teacher`` and ``distill`` the step is the distill step (CE + IntRA-KD), otherwise the
    student-only CE step.

    Returns:
      ``(state, step)`` with ``step(state, teacher_vars, batch) -> (state, metrics)``.
    """
    dummy = jnp.zeros((1, *hw, 3))
    params = jax.eval_shape(lambda: eval_student.init(jax.random.key(0), dummy))["params"]
    tx = optim.make_optimizer(params, learning_rate, num_train_steps)
    state = steps.run_once(
        lambda k: steps.create_train_state(eval_student, tx, k, hw),
        jax.random.key(0),
        out_shardings=parallel.replicated(mesh),
    )
    step = steps.make_train_step(
        student,
        tx,
        mesh,
        len(class_weights),
        list(class_weights),
        teacher=teacher,
        distill=distill,
    )
    return state, step


def loss_grad_fn(
    eval_student,
    student_vars,
    teacher,
    teacher_vars,
    labels_bhw: jax.Array,
    num_classes: int,
    taps: tuple,
    rng: np.random.Generator,
) -> Callable[[], None]:
    """A blocking call of the IntRA-KD loss and its gradient on random taps of the step's shapes."""
    dummy = jnp.zeros((1, *labels_bhw.shape[1:], 3))
    batch_size = labels_bhw.shape[0]
    shapes = {
        "s": jax.eval_shape(lambda: eval_student.apply(student_vars, dummy))[1],
        "t": jax.eval_shape(lambda: teacher.apply(teacher_vars, dummy))[1],
    }
    feats = {
        side: {
            k: jnp.asarray(rng.normal(size=(batch_size, *v.shape[1:])), jnp.float32)
            for k, v in taps_.items()
        }
        for side, taps_ in shapes.items()
    }
    # Teacher taps and labels are arguments, not closed-over constants: XLA would otherwise fold
    # the teacher half of the loss at compile time and leave it out of the timing.
    loss_grad = jax.jit(
        jax.value_and_grad(lambda s, t, y: multi_tap_intra_kd_loss(s, t, y, num_classes, taps))
    )
    return lambda: jax.block_until_ready(loss_grad(feats["s"], feats["t"], labels_bhw))
