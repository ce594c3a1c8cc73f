"""First-step compile time, recompilation count and peak host memory of the distill step.

  python benchmarks/compile_memory.py --size=culane --batch=4
  python benchmarks/compile_memory.py --size=apolloscape --batch=8 --remat

Builds the official pair (PSPNet on a dilated ResNet-101 teacher, ERFNet student) at the
dataset's input size on random data, then reports:
  * seconds from the first call of the jitted distill step to its result (trace + XLA compile +
    one run), and of the first evaluation step;
  * of that, the compilation (trace, lowering, XLA) from jax.monitoring duration events;
  * the number of XLA compilations during ``--steady_steps`` further train steps and two
    further eval steps (counted from ``jax_log_compiles`` records; must be 0);
  * the process's peak resident memory (``ru_maxrss``) at the end, and the step's buffer sizes
    from XLA's ``memory_analysis`` (also when the step runs out of memory).
Run one size per process: the peak memory is that of the whole process.
"""

import logging
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402  (benchmarks/harness.py, beside this script)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from intrakd_jax import parallel, steps  # noqa: E402
from intrakd_jax.losses import terms  # noqa: E402

SIZES = {"culane": ((208, 976), 5), "apolloscape": ((496, 1488), 37), "llamas": ((720, 1280), 5)}
_SIZE = flags.DEFINE_enum("size", "culane", list(SIZES), "input size and classes")
_BATCH = flags.DEFINE_integer("batch", 4, "global batch")
_STEADY = flags.DEFINE_integer("steady_steps", 2, "train steps after the first")
_REMAT = flags.DEFINE_bool(
    "remat", False, "student.model_kwargs.erfnet.remat (gradient checkpointing)"
)
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "fast", ["fast", "xla"], "model conv_impl")

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_durations: dict[str, float] = {}


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _durations[event] = _durations.get(event, 0.0) + seconds


class _CompileCounter(logging.Handler):
    """Counts the 'Compiling ...' records jax emits with ``jax_log_compiles``."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.count += 1
            self.names.append(msg.split(" ")[1])


def main(_):
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    hw, n = SIZES[_SIZE.value]
    batch_size = _BATCH.value
    c = default.get_base_config()
    c.student.model_kwargs.erfnet.update(remat=_REMAT.value, conv_impl=_CONV_IMPL.value)
    c.teacher.model_kwargs.update(conv_impl=_CONV_IMPL.value)
    mesh = parallel.make_data_mesh()
    student, eval_student, teacher = harness.build_models(c, n, jnp.float32)
    tvars = harness.init_teacher(teacher, hw, mesh)
    state, step = harness.student_state_and_step(
        student,
        eval_student,
        hw,
        mesh,
        [1.0] * n,
        c.student.learning_rate,
        1000,
        teacher=teacher,
        distill=terms.DistillSpec((harness.intra_kd_term(c, eval_student, teacher),)),
    )
    eval_step = steps.make_eval_step(eval_student, mesh, n)
    rng = np.random.default_rng(0)

    def batch(k: int) -> dict:
        return parallel.to_global(
            {
                "image": rng.normal(size=(batch_size, *hw, 3)).astype(np.float32),
                "label": rng.integers(0, n, size=(batch_size, *hw)).astype(np.int32),
                "mask": np.arange(batch_size) < batch_size - k,  # a padded last batch too
            },
            mesh,
        )

    def train_batch() -> dict:
        b = batch(0)
        return {"image": b["image"], "label": b["label"]}

    print(
        f"size {_SIZE.value} {hw} x batch {batch_size}, {n} classes, {mesh.devices.size} x "
        f"{jax.devices()[0].platform}, jax {jax.__version__}, conv_impl={_CONV_IMPL.value}, "
        f"remat={_REMAT.value}",
        flush=True,
    )
    first_batch = train_batch()
    # Shapes of the arguments for the memory report (the first call donates the state).
    abstract_args = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        (state, tvars, first_batch),
    )
    _durations.clear()
    t = time.perf_counter()
    try:
        state, metrics = step(state, tvars, first_batch)
        jax.block_until_ready(metrics)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"first distill step: out of memory ({str(e).splitlines()[0]})")
        _print_buffers(step, *abstract_args)
        sys.exit(1)
    first_step = time.perf_counter() - t
    compile_parts = dict(_durations)
    svars = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
    t = time.perf_counter()
    jax.block_until_ready(eval_step(svars(state), batch(0)))
    first_eval = time.perf_counter() - t

    counter = _CompileCounter()
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(counter)
    jax.config.update("jax_log_compiles", True)
    t = time.perf_counter()
    for _ in range(_STEADY.value):
        state, metrics = step(state, tvars, train_batch())
    jax.block_until_ready(metrics)
    steady = (time.perf_counter() - t) / max(1, _STEADY.value)
    for k in (0, 1):
        jax.block_until_ready(eval_step(svars(state), batch(k)))
    jax.config.update("jax_log_compiles", False)
    jax_logger.removeHandler(counter)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"first distill step (trace + compile + run): {first_step:.1f} s")
    trace, lower, backend = (compile_parts.get(e, 0.0) for e in _COMPILE_EVENTS)
    print(
        f"  of which compilation: {trace + lower + backend:.1f} s (trace {trace:.1f} s, "
        f"lowering {lower:.1f} s, XLA {backend:.1f} s)"
    )
    print(f"first eval step (trace + compile + run): {first_eval:.1f} s")
    print(f"steady distill step: {steady:.2f} s")
    print(
        f"compilations after the first step ({_STEADY.value} train + 2 eval steps): {counter.count}"
    )
    if counter.names:
        print(f"  recompiled: {sorted(set(counter.names))}")
    print(f"peak host memory (ru_maxrss): {peak_gib:.2f} GiB")
    _print_buffers(step, *abstract_args)


def _print_buffers(step, *args) -> None:
    """XLA's buffer sizes for the distill step (a separate compile, after the timings)."""
    mem = step.lower(*args).compile().memory_analysis()
    gib = 2.0**30
    print(
        f"distill step buffers (XLA memory_analysis): temporaries "
        f"{mem.temp_size_in_bytes / gib:.2f} GiB, arguments {mem.argument_size_in_bytes / gib:.2f}"
        f" GiB, outputs {mem.output_size_in_bytes / gib:.2f} GiB"
    )


if __name__ == "__main__":
    app.run(main)
