"""Images/s of the distillation step and the share of it spent in the IntRA-KD loss.

  python benchmarks/step.py --config=configs/llamas.py:synthetic
  python benchmarks/step.py --config=configs/llamas.py --batch=4 --steps=5
  python benchmarks/step.py --vs-torch --size culane --batch 4

Runs on random data of the config's input size (no dataset needed) on all visible devices:
  1. the full jitted distill step (teacher forward, student forward/backward, CE + IntRA-KD, SGD);
  2. the IntRA-KD loss and its gradient alone, on taps of the shapes the step produces.
The loss share is time(2) / time(1). Medians over --steps timed runs after one warm-up.

With --vs-torch the official networks (ERFNet (16, 64, 128) student, PSPNet on a dilated
ResNet-101 teacher) run at a dataset's training size (culane 208x976, 5 classes; apolloscape
496x1488, 37 classes) in JAX and in the eager PyTorch reference (benchmarks/torch_reference.py,
needs torch: benchmarks/requirements.txt), on the same shapes and thread count, for the distill
step, the student-only (CE) step and student inference. Runs alternate JAX / PyTorch, --steps
rounds after a warm-up of each; the last line is
  ratios: distill=<x> student=<y> inference=<z> loss_share=<s>
(JAX images/s over PyTorch images/s, and the IntRA-KD loss+grad time over the JAX distill step).
The process starts with ``cpu_allocator.keep_freed_memory`` (glibc keeps freed pages, for JAX
and PyTorch alike); ``INTRAKD_KEEP_FREED_MEMORY=0`` runs glibc's defaults.
With several --conv-impl values (--conv-impl=fast,onednn) each gets its JAX runs in the same
alternating rounds and its own ratios line, ``ratios[<impl>]: ...``.
"""

import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intrakd_jax import cpu_allocator  # noqa: E402

# Before jax and torch start their threads; both sides of --vs-torch run under it.
# INTRAKD_KEEP_FREED_MEMORY=0 measures glibc's defaults.
_MALLOC = "glibc, freed memory kept" if cpu_allocator.keep_freed_memory() else "glibc defaults"

import harness  # noqa: E402  (benchmarks/harness.py, beside this script)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import default  # noqa: E402
from intrakd_jax import building, parallel, steps  # noqa: E402
from intrakd_jax.losses import terms  # noqa: E402
from intrakd_jax.models import conv as conv_lib  # noqa: E402
from intrakd_jax.models.erfnet import torch_conv_transpose_padding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/llamas.py:synthetic", "config file")
_BATCH = flags.DEFINE_integer("batch", None, "global batch (default: config.batch_size)")
_STEPS = flags.DEFINE_integer("steps", 5, "timed runs (with --vs-torch: alternating rounds)")
_VS_TORCH = flags.DEFINE_bool("vs-torch", False, "compare with the eager PyTorch reference")
_SIZE = flags.DEFINE_enum("size", "culane", ["culane", "apolloscape"], "--vs-torch input size")
_CONV_IMPL = flags.DEFINE_list(
    "conv-impl",
    ["fast"],
    "--vs-torch, --parts, --layers: JAX convolutions (models' conv_impl: fast (the configs' "
    "default), onednn, xla); "
    "several (--conv-impl=fast,onednn) are timed side by side in one run, alternating with "
    "PyTorch",
)
_REMAT = flags.DEFINE_bool("remat", False, "--vs-torch: JAX student with remat (checkpointing)")
_PARTS = flags.DEFINE_bool(
    "parts", False, "ERFNet alone: eval forward, train forward, forward + backward (at --size)"
)
_LAYERS = flags.DEFINE_bool(
    "layers",
    False,
    "per-layer table: forward and backward of each conv layer shape, xla vs --conv-impl",
)
_MODES = flags.DEFINE_list(
    "modes", ["distill", "student", "inference"], "--vs-torch: which steps to time"
)
NUM_CLASSES = {"llamas": 5}

# --vs-torch sizes: (input (H, W), class weights); ignore label 255 in both.
VS_TORCH_SIZES = {
    "culane": ((208, 976), (0.4, 1.0, 1.0, 1.0, 1.0)),
    "apolloscape": ((496, 1488), (0.05,) + (1.0,) * 35 + (0.05,)),
}


def _median_seconds(fn, runs: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(_):
    c = _CONFIG.value
    batch_size = _BATCH.value or c.batch_size
    n = NUM_CLASSES.get(c.data.name, 5) if c.data.label_type == "multiclass" else 2
    hw = tuple(c.data.image_hw)
    dtype = building.compute_dtype(c)
    mesh = parallel.make_data_mesh(c.num_devices)
    student, eval_student, teacher = harness.build_models(c, n, dtype)
    tvars = harness.init_teacher(teacher, hw, mesh)
    term = harness.intra_kd_term(c, eval_student, teacher)
    state, step = harness.student_state_and_step(
        student,
        eval_student,
        hw,
        mesh,
        [1.0] * n,
        c.student.learning_rate,
        c.student.num_train_steps,
        teacher=teacher,
        distill=terms.DistillSpec((term,)),
    )
    rng = np.random.default_rng(0)
    batch = parallel.to_global(
        {
            "image": rng.normal(size=(batch_size, *hw, 3)).astype(np.float32),
            "label": rng.integers(0, n, size=(batch_size, *hw)).astype(np.int32),
        },
        mesh,
    )
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = step(holder["state"], tvars, batch)
        return metrics

    t_step = _median_seconds(run_step, _STEPS.value)

    svars = holder["state"].variables
    loss_grad = harness.loss_grad_fn(
        eval_student, svars, teacher, tvars, batch["label"], n, term.taps, rng
    )
    t_loss = _median_seconds(loss_grad, _STEPS.value)
    print(
        f"devices: {mesh.devices.size} x {jax.devices()[0].platform}; input {hw}; batch "
        f"{batch_size}; student {c.student.model} {building.model_kwargs(c.student)}; teacher "
        f"{c.teacher.model} {dict(c.teacher.model_kwargs)}"
    )
    print(f"distill step: {t_step * 1e3:.1f} ms  ->  {batch_size / t_step:.2f} images/s")
    print(f"IntRA-KD loss+grad: {t_loss * 1e3:.2f} ms  ->  loss share {t_loss / t_step:.3f}")


def _block_seconds(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _minor_faults() -> int:
    """Minor page faults of this process so far (a step's fresh temporaries show up here)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _vs_torch_jax(size: str, batch_size: int, conv_impl: str, remat: bool = False):
    """JAX side: {mode: callable that runs one blocking step}, and the loss+grad callable."""
    hw, class_weights = VS_TORCH_SIZES[size]
    n = len(class_weights)
    mesh = parallel.make_data_mesh(1)
    base = get_config_defaults()
    base.student.model_kwargs.erfnet.update(conv_impl=conv_impl, remat=remat)
    base.teacher.model_kwargs.update(conv_impl=conv_impl)
    student, eval_student, teacher = harness.build_models(base, n, jnp.float32)
    dummy = jnp.zeros((1, *hw, 3))
    term = harness.intra_kd_term(base, eval_student, teacher)
    taps = term.taps
    tvars = harness.init_teacher(teacher, hw, mesh)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, n, size=(batch_size, *hw)).astype(np.int32)
    labels[:, : hw[0] // 10] = 255  # some ignore pixels, as in real labels
    batch = parallel.to_global(
        {"image": rng.normal(size=(batch_size, *hw, 3)).astype(np.float32), "label": labels},
        mesh,
    )
    settings = terms.DistillSpec((term,))
    runners = {}
    for mode in ("distill", "student"):
        distill = mode == "distill"
        state, step = harness.student_state_and_step(
            student,
            eval_student,
            hw,
            mesh,
            class_weights,
            base.student.learning_rate,
            base.student.num_train_steps,
            teacher=teacher if distill else None,
            distill=settings if distill else None,
        )
        holder = {"state": state}

        def run(step=step, holder=holder, tv=tvars if distill else {}):
            holder["state"], metrics = step(holder["state"], tv, batch)
            jax.block_until_ready(metrics)

        runners[mode] = run
    svars = steps.run_once(lambda k: eval_student.init(k, dummy), jax.random.key(0))
    infer = jax.jit(lambda v, x: eval_student.apply(v, x)[0])
    runners["inference"] = lambda: jax.block_until_ready(infer(svars, batch["image"]))

    loss_grad = harness.loss_grad_fn(
        eval_student, svars, teacher, tvars, batch["label"], n, taps, rng
    )
    return runners, loss_grad


def get_config_defaults():
    """The default experiment settings (model widths, distillation taps and weight, SGD)."""
    return default.get_base_config()


def _vs_torch_torch(size: str, batch_size: int):
    """PyTorch side: {mode: callable that runs one step}."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch_reference as tr

    hw, class_weights = VS_TORCH_SIZES[size]
    n = len(class_weights)
    base = get_config_defaults()
    # JAX model options with no torch twin (scale_series, align_corners: the released
    # IntRA-KD head, off by default; torch_reference.PSPNet is the bins head).
    jax_only = (
        "deep_stem",
        "conv_impl",
        "remat",
        "reverse_input_channels",
        "scale_series",
        "align_corners",
    )
    s_kw = {k: v for k, v in building.model_kwargs(base.student).items() if k not in jax_only}
    t_kw = {k: v for k, v in dict(base.teacher.model_kwargs).items() if k not in jax_only}
    if base.teacher.model_kwargs.deep_stem:
        raise ValueError("torch_reference.PSPNet has the 7x7 stem only (deep_stem=False)")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(batch_size, 3, *hw)).astype(np.float32))
    labels_np = rng.integers(0, n, size=(batch_size, *hw)).astype(np.int64)
    labels_np[:, : hw[0] // 10] = 255
    labels = torch.from_numpy(labels_np)
    teacher = tr.PSPNet(n, **t_kw)
    term = base.distill.intra_kd
    common = dict(
        class_weights=class_weights,
        learning_rate=base.student.learning_rate,
        num_steps=base.student.num_train_steps,
        momentum=base.optim.momentum,
        weight_decay=base.optim.weight_decay,
        poly_power=base.optim.poly_power,
    )
    distill = tr.Trainer(
        tr.ERFNet(n, **s_kw),
        teacher=teacher,
        taps=(("encoder", "psp", 1.0),),  # the default "high" levels of ERFNet and PSPNet
        kd_weight=term.weight,
        **common,
    )
    student = tr.Trainer(tr.ERFNet(n, **s_kw), **common)
    infer = tr.make_inference(tr.ERFNet(n, **s_kw))
    return {
        "distill": lambda: distill.step(images, labels),
        "student": lambda: student.step(images, labels),
        "inference": lambda: infer(images),
    }


def vs_torch(
    size: str,
    batch_size: int,
    rounds: int,
    conv_impls: list[str],
    modes: list[str],
    remat: bool = False,
) -> None:
    """Times JAX (one or more conv_impl) against the PyTorch reference, alternating.

    Prints one line per round, a table and a ratios line per conv_impl (the plain ``ratios:``
    line when only one is timed).
    """
    import torch

    unknown = sorted(set(modes) - {"distill", "student", "inference"})
    if unknown:
        raise ValueError(f"--modes: unknown {unknown}; expected distill, student, inference")
    for impl in conv_impls:
        conv_lib.check_conv_impl("--conv-impl", impl)
    # XLA:CPU runs ops on an intra-op pool with one thread per core this process may use.
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    sides = {}
    loss_grads = {}
    for impl in conv_impls:
        sides[f"jax:{impl}"], loss_grads[impl] = _vs_torch_jax(size, batch_size, impl, remat)
    sides["torch"] = _vs_torch_torch(size, batch_size)
    times = {(fw, m): [] for fw in sides for m in modes}
    faults = {(fw, m): [] for fw in sides for m in modes}
    for mode in modes:  # warm-up (compilation, allocator, oneDNN primitive caches)
        for runs in sides.values():
            runs[mode]()
    order = list(sides.items())
    for r in range(rounds):
        # Rotate which side goes first so drifting machine load hits all alike.
        shift = r % len(order)
        for mode in modes:
            for fw, runs in order[shift:] + order[:shift]:
                before = _minor_faults()
                times[(fw, mode)].append(_seconds(runs[mode]))
                faults[(fw, mode)].append(_minor_faults() - before)
        print(
            f"round {r + 1}/{rounds}: "
            + "  ".join(f"{fw}/{m} {times[(fw, m)][-1] * 1e3:.0f} ms" for fw, m in times),
            flush=True,
        )
    t_loss = {}
    for impl, loss_grad in loss_grads.items():
        loss_grad()
        t_loss[impl] = float(np.median([_seconds(loss_grad) for _ in range(max(rounds, 3))]))
    hw = VS_TORCH_SIZES[size][0]
    print(
        f"size {size} {hw[0]}x{hw[1]}, batch {batch_size}, {threads} threads, jax "
        f"{jax.__version__} (conv_impl={','.join(conv_impls)}, remat={remat}), torch "
        f"{torch.__version__}, malloc: {_MALLOC}, medians of {rounds} alternating rounds"
    )
    med = {k: float(np.median(v)) for k, v in times.items()}
    for impl in conv_impls:
        for mode in modes:
            tj, tt = med[(f"jax:{impl}", mode)], med[("torch", mode)]
            fj = int(np.median(faults[(f"jax:{impl}", mode)]))
            ft = int(np.median(faults[("torch", mode)]))
            print(
                f"{mode:9s}  jax[{impl}] {tj * 1e3:8.1f} ms ({batch_size / tj:6.2f} img/s)   "
                f"torch {tt * 1e3:8.1f} ms ({batch_size / tt:6.2f} img/s)   ratio {tt / tj:.2f}"
                f"   page faults/step jax {fj} torch {ft}"
            )
    for impl in conv_impls:
        ratio = {m: f"{med[('torch', m)] / med[(f'jax:{impl}', m)]:.2f}" for m in modes}
        t_distill = med.get((f"jax:{impl}", "distill"))
        share = f"{t_loss[impl] / t_distill:.4f}" if t_distill else "nan"
        label = "ratios:" if len(conv_impls) == 1 else f"ratios[{impl}]:"
        print(f"IntRA-KD loss+grad ({impl}): {t_loss[impl] * 1e3:.1f} ms")
        print(
            f"{label} distill={ratio.get('distill', 'nan')} "
            f"student={ratio.get('student', 'nan')} "
            f"inference={ratio.get('inference', 'nan')} loss_share={share}"
        )


def _layer_cases(size: str, batch: int, num_classes: int) -> list[tuple]:
    """ERFNet's convolution, transposed convolution and pooling shapes at a dataset size."""
    h, w = VS_TORCH_SIZES[size][0]
    same1 = ((1, 1), (0, 0))
    return [
        ("conv 3x3/2 3->13 (initial)", (batch, h, w, 3), "conv", (3, 3, 3, 13), 2, 1, 1),
        ("conv 3x3/2 16->48", (batch, h // 2, w // 2, 16), "conv", (3, 3, 16, 48), 2, 1, 1),
        ("conv 3x1 64 (1/4)", (batch, h // 4, w // 4, 64), "conv", (3, 1, 64, 64), 1, same1, 1),
        ("conv 1x3 64 (1/4)", (batch, h // 4, w // 4, 64), "conv", (1, 3, 64, 64), 1, 0, 1),
        ("conv 3x3/2 64->64", (batch, h // 4, w // 4, 64), "conv", (3, 3, 64, 64), 2, 1, 1),
        ("conv 3x1 128 (1/8)", (batch, h // 8, w // 8, 128), "conv", (3, 1, 128, 128), 1, same1, 1),
        (
            "conv 3x1 128 dil 4",
            (batch, h // 8, w // 8, 128),
            "conv",
            (3, 1, 128, 128),
            1,
            ((4, 4), (0, 0)),
            (4, 1),
        ),
        (
            "conv 1x3 128 dil 16",
            (batch, h // 8, w // 8, 128),
            "conv",
            (1, 3, 128, 128),
            1,
            ((0, 0), (16, 16)),
            (1, 16),
        ),
        ("conv 3x1 16 (1/2)", (batch, h // 2, w // 2, 16), "conv", (3, 1, 16, 16), 1, same1, 1),
        ("deconv 3x3/2 128->64", (batch, h // 8, w // 8, 128), "deconv", (3, 3, 64, 128), 2, 1, 1),
        ("deconv 3x3/2 64->16", (batch, h // 4, w // 4, 64), "deconv", (3, 3, 16, 64), 2, 1, 1),
        (
            f"deconv 2x2/2 16->{num_classes}",
            (batch, h // 2, w // 2, 16),
            "deconv",
            (2, 2, num_classes, 16),
            2,
            0,
            0,
        ),
        ("maxpool 2x2 3ch", (batch, h, w, 3), "pool", None, 2, 0, 1),
        ("maxpool 2x2 16ch", (batch, h // 2, w // 2, 16), "pool", None, 2, 0, 1),
        ("maxpool 2x2 64ch", (batch, h // 4, w // 4, 64), "pool", None, 2, 0, 1),
        (
            "conv 1x1 2048->512 (teacher)",
            (batch, h // 8, w // 8, 2048),
            "conv",
            (1, 1, 2048, 512),
            1,
            0,
            1,
        ),
        (
            "conv 3x3 4096->512 (teacher)",
            (batch, h // 8, w // 8, 4096),
            "conv",
            (3, 3, 4096, 512),
            1,
            1,
            1,
        ),
    ]


def layer_table(
    size: str, batch_size: int, rounds: int, impls: tuple[str, ...] = ("fast",)
) -> None:
    """Prints forward and forward+backward times per layer shape for conv_impl xla and ``impls``.

    Forward + backward is ``jax.vjp`` and its pullback in one jitted function (dX and dW; for
    pooling dX). Rounds rotate the implementations; medians; the speedups are over "xla".
    """
    n = len(VS_TORCH_SIZES[size][1])
    rng = np.random.default_rng(0)
    impls = ("xla", *(i for i in impls if i != "xla"))
    print(f"size {size}, batch {batch_size}, medians of {rounds} alternating rounds (ms)")
    print(
        f"{'layer':32s} "
        + " ".join(f"{i + ' fwd':>11s} {i + ' f+b':>11s}" for i in impls)
        + "".join(f"  {i + ' f+b speedup':>18s}" for i in impls[1:])
    )
    for name, x_shape, kind, k_shape, stride, pad, extra in _layer_cases(size, batch_size, n):
        x = jnp.asarray(np.maximum(rng.normal(size=x_shape), 0.0), jnp.float32)
        k = None if k_shape is None else jnp.asarray(rng.normal(size=k_shape) * 0.05, jnp.float32)

        def make(impl, kind=kind, k_shape=k_shape, stride=stride, pad=pad, extra=extra):
            if kind == "conv":
                pads = pad if isinstance(pad, tuple) else ((pad, pad), (pad, pad))
                return lambda a, b: conv_lib.conv2d(a, b, stride, pads, extra, impl)
            if kind == "deconv":
                lo_hi = torch_conv_transpose_padding(k_shape[0], pad, extra)
                return lambda a, b: conv_lib.conv_transpose2d(
                    a, b, stride, (lo_hi, lo_hi), True, impl
                )
            return lambda a, b: conv_lib.max_pool(a, (2, 2), impl=impl)

        fns = {}
        for impl in impls:
            f = make(impl)
            fwd = jax.jit(f)
            g = jnp.ones(jax.eval_shape(f, x, k).shape, jnp.float32)
            fwd_bwd = jax.jit(lambda a, b, g_, f=f: jax.vjp(f, a, b)[1](g_))
            jax.block_until_ready((fwd(x, k), fwd_bwd(x, k, g)))
            fns[impl] = (fwd, fwd_bwd, g)
        times = {impl: ([], []) for impl in fns}
        for r in range(rounds):
            for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
                fwd, fwd_bwd, g = fns[impl]
                times[impl][0].append(_block_seconds(fwd, x, k))
                times[impl][1].append(_block_seconds(fwd_bwd, x, k, g))
        med = {impl: [float(np.median(t)) * 1e3 for t in ts] for impl, ts in times.items()}
        print(
            f"{name:32s} "
            + " ".join(f"{med[i][0]:11.1f} {med[i][1]:11.1f}" for i in impls)
            + "".join(f"  {med['xla'][1] / med[i][1]:17.2f}x" for i in impls[1:]),
            flush=True,
        )


def student_parts(size: str, batch_size: int, rounds: int, conv_impl: str) -> None:
    """Times the official ERFNet's evaluation forward, training forward, and forward + backward.

    The plain model (no shard_map, no optimiser) at a --vs-torch size on random data: where the
    student step's time goes between the forward and the backward pass.
    """
    hw, class_weights = VS_TORCH_SIZES[size]
    n = len(class_weights)
    base = get_config_defaults()
    base.student.model_kwargs.erfnet.update(conv_impl=conv_impl)
    # The evaluation build (BatchNorm not synced over a mesh axis): this runs outside shard_map.
    _, model, _ = harness.build_models(base, n, jnp.float32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch_size, *hw, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, n, size=(batch_size, *hw)))
    variables = model.init(jax.random.key(0), x[:1])
    rngs = {"dropout": jax.random.key(1)}

    def train_forward(params, stats, x):
        (logits, _), new = model.apply(
            {"params": params, "batch_stats": stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs=rngs,
        )
        return logits, new

    def ce(params, stats, x, y):
        logits, new = train_forward(params, stats, x)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1)), new

    p, st = variables["params"], variables["batch_stats"]
    parts = {
        "eval forward": (jax.jit(lambda v, x: model.apply(v, x)[0]), (variables, x)),
        "train forward": (jax.jit(train_forward), (p, st, x)),
        "forward + backward": (jax.jit(jax.grad(ce, has_aux=True)), (p, st, x, y)),
    }
    times = {k: _median_seconds(lambda f=f, a=a: f(*a), rounds) for k, (f, a) in parts.items()}
    print(f"ERFNet {size} {hw[0]}x{hw[1]} batch {batch_size}, conv_impl={conv_impl}:")
    for k, t in times.items():
        print(f"  {k:20s} {t * 1e3:8.1f} ms")
    backward = times["forward + backward"] - times["train forward"]
    ratio = backward / times["train forward"]
    print(f"  backward (difference) {backward * 1e3:7.1f} ms = {ratio:.1f}x the train forward")


def _entry(argv):
    if _PARTS.value:
        for impl in _CONV_IMPL.value:
            student_parts(_SIZE.value, _BATCH.value or 4, _STEPS.value, impl)
    elif _LAYERS.value:
        layer_table(_SIZE.value, _BATCH.value or 4, _STEPS.value, tuple(_CONV_IMPL.value))
    elif _VS_TORCH.value:
        hw_batch = _BATCH.value or 4
        vs_torch(_SIZE.value, hw_batch, _STEPS.value, _CONV_IMPL.value, _MODES.value, _REMAT.value)
    else:
        main(argv)


if __name__ == "__main__":
    app.run(_entry)
