"""Inference images/s of ERFNet at CULane size on every deployment path, side by side.

  python benchmarks/infer.py                                   # batch 1 and 8, 7 rounds
  python benchmarks/infer.py --batches=8 --rounds=3 --paths=flax,tflite,torch
  INTRAKD_TCMALLOC=0 python benchmarks/infer.py                # glibc malloc instead of tcmalloc

The official ERFNet student (channels (16, 64, 128), 2.07M parameters, 5 CULane classes) with
random weights and moved BatchNorm statistics runs at the CULane network size 208x976 through:

  flax        the Flax model under jax.jit (variables as arguments, as the evaluation code runs it)
  flax_tuned  the same jit with deploy.CPU_COMPILER_OPTIONS (no YNNPACK fusions in XLA:CPU)
  jax_export  the mode=export artifact model.jax_export through intrakd_jax.deploy.load (which
              compiles with deploy.CPU_COMPILER_OPTIONS on CPU)
  savedmodel  the exported SavedModel (tf.saved_model.load, signature serving_default)
  tflite      the exported model.tflite (tf.lite.Interpreter with --threads threads, XNNPACK)
  tflite_fixed  the same with the batch size fixed at export (export_model(tflite_batch=B)),
              one file per batch size: BatchNorm folded into the convolutions
  torch       the eager PyTorch twin (benchmarks/torch_reference.py) with the same weights,
              torch.inference_mode, torch.set_num_threads(--threads)

Every path computes the same function, the export's input convention: float32 RGB 0..255
(B, 208, 976, 3) in, normalisation inside, softmax probabilities (B, 208, 976, 5) out as a numpy
array (PyTorch: the permuted NHWC view of its NCHW output, no copy). Each round runs every path
once, the order rotating between rounds so drifting load hits all alike, after --warmup runs of
each. The development machine is shared, and another job's threads stall the worker barriers of
OpenMP (PyTorch) and XLA, making single runs several times slower: a run during which other
processes used more than --max_foreign of the CPUs is repeated (up to --retries times), and the
table says how many of each path's runs were quiet. It gives medians, images/s, the ratio to
PyTorch, each path's largest |probability difference| from the flax path on the same batch, and
"cores busy" (the process's CPU time over wall time: how many of the cores a path keeps working).
With --profile, the flax paths are also traced (XLA op time by op). The last line is
  best_vs_torch: b1=<x> b8=<y>
(the fastest of our paths over PyTorch, images/s). Like main.py, the script re-executes itself
with tcmalloc preloaded when the host has it (INTRAKD_TCMALLOC=0 keeps glibc malloc); the
header says which allocator ran.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intrakd_jax import cpu_allocator  # noqa: E402

cpu_allocator.reexec_with_tcmalloc()  # before numpy, jax, TF and torch load their allocators
cpu_allocator.keep_freed_memory()  # without tcmalloc: glibc reuses freed pages
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import collections  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import glob  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

# jaxlib's reader of jax.profiler traces (private: --profile is a diagnostic).
from jax._src.lib import _profile_data  # noqa: E402

from configs import culane as culane_config  # noqa: E402
from intrakd_jax import building, deploy, export  # noqa: E402

PATHS = ("flax", "flax_tuned", "jax_export", "savedmodel", "tflite", "tflite_fixed", "torch")
HW = (208, 976)

_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "batch sizes")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "timed rounds (each runs every path once)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed runs of each path first")
_PATHS = flags.DEFINE_list("paths", list(PATHS), f"any of {','.join(PATHS)}")
_THREADS = flags.DEFINE_integer("threads", None, "threads for TFLite/PyTorch (default: cores)")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "keep the export here (default: temp)")
_RETRIES = flags.DEFINE_integer("retries", 6, "extra tries of a run disturbed by other processes")
_FOREIGN = flags.DEFINE_float(
    "max_foreign", 0.1, "a run is quiet when other processes used under this share of the CPUs"
)
_PROFILE = flags.DEFINE_bool(
    "profile",
    False,
    "also trace the flax and flax_tuned paths (jax.profiler): XLA op time by op, cores busy",
)
_FLAX_IMPL = flags.DEFINE_enum(
    "flax_conv_impl", "fast", ["fast", "xla"], "conv_impl of the flax path's model"
)


def allocator() -> str:
    """The malloc this process runs with, from its mapped libraries."""
    with open("/proc/self/maps") as f:
        maps = f.read()
    for name in ("tcmalloc", "jemalloc"):
        if name in maps:
            return name
    return "glibc malloc"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _busy_jiffies() -> int:
    """CPU time spent by every process on the machine so far (clock ticks, steal included)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return user + nice + system + irq + softirq + steal


def timed_run(run, images, retries: int, max_foreign: float) -> tuple[float, float, bool]:
    """Wall seconds of ``run(images)``, repeated while other processes were busy meanwhile.

    The development machine is shared: another job's threads stall OpenMP and XLA worker
    barriers and make single runs several times slower (PyTorch's the most). A run counts as
    quiet when the CPU time of other processes during it stayed under ``max_foreign`` of the
    machine's capacity; up to ``retries`` further tries are made for a quiet one, and the last
    try is kept otherwise (the table says how many runs were quiet).

    Returns:
      ``(wall seconds, cores busy = this process's CPU time / wall, quiet)``.
    """
    tick = os.sysconf("SC_CLK_TCK")
    cpus = os.cpu_count() or 1
    for attempt in range(retries + 1):
        time.sleep(0.05)  # let the previous framework's spinning workers go idle
        busy, own = _busy_jiffies(), sum(os.times()[:2])
        start = time.perf_counter()
        run(images)
        seconds = time.perf_counter() - start
        own = sum(os.times()[:2]) - own
        foreign = (_busy_jiffies() - busy) / tick - own
        quiet = foreign <= max_foreign * seconds * cpus
        if quiet or attempt == retries:
            return seconds, own / seconds, quiet
    raise AssertionError("unreachable")


def model_and_variables(num_classes: int):
    """The official ERFNet student, seed 0, BN statistics moved as after training."""
    config = culane_config.get_config("")
    kwargs = building.model_kwargs(config.student)
    model = building.build_model("erfnet", kwargs, num_classes, jnp.float32, False)
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *HW, 3)), train=False)
    )()
    rng = np.random.default_rng(0)

    def moved(path, a):
        if path[-1].key == "mean":
            return jnp.asarray(rng.normal(0.0, 0.5, a.shape), a.dtype)
        return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)

    stats = jax.tree_util.tree_map_with_path(moved, variables["batch_stats"])
    return config, model, {"params": variables["params"], "batch_stats": stats}, kwargs


def flax_runner(model, variables, mean, std, conv_impl: str, compiler_options=None):
    """The Flax model under jax.jit, variables as arguments (the evaluation code's way)."""
    plain = model.clone(conv_impl=conv_impl)
    mean, std = np.float32(mean), np.float32(std)

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def predict(v, images):
        logits, _ = plain.apply(v, (images - mean) / std, train=False)
        return jax.nn.softmax(logits, axis=-1)

    return lambda images: np.asarray(predict(variables, images))


def savedmodel_runner(path: str):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()


def tflite_runner(path_of_batch, threads: int):
    """TFLite on a batch; ``path_of_batch(b)`` names the file (one for all, or one per size)."""
    interpreters = {}

    def run(images):
        b = images.shape[0]
        if b not in interpreters:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", export.TFLITE_DEPRECATION, UserWarning)
                it = tf.lite.Interpreter(model_path=path_of_batch(b), num_threads=threads)
            it.resize_tensor_input(it.get_input_details()[0]["index"], list(images.shape))
            it.allocate_tensors()
            interpreters[b] = it
        it = interpreters[b]
        it.set_tensor(it.get_input_details()[0]["index"], images)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    return run


def torch_runner(variables, kwargs, num_classes: int, mean, std, threads: int):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch_reference as tr

    torch.set_num_threads(threads)
    twin_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("conv_impl", "remat", "reverse_input_channels")
    }
    net = tr.ERFNet(num_classes, **twin_kwargs)
    tr.load_flax_variables(net, jax.device_get(variables))
    net.eval()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def run(images):
        with torch.inference_mode():
            x = torch.from_numpy(images).permute(0, 3, 1, 2)
            probs = torch.softmax(net((x - mean_t) / std_t)[0], dim=1)
            return probs.permute(0, 2, 3, 1).numpy()

    return run, torch.__version__


def xla_profile(name: str, run, images, repeats: int = 3) -> None:
    """Prints wall time, XLA op time summed over threads (cores busy) and the largest ops.

    Events come from a jax.profiler trace, read with jaxlib's profile reader (a private module:
    the breakdown is a diagnostic). Ops XLA:CPU hands to Eigen's own pool (its convolutions)
    record no event, so wall time minus op time bounds their share.
    """
    trace_dir = tempfile.mkdtemp(prefix="infer_trace_")
    run(images)
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(repeats):
            run(images)
    wall = (time.perf_counter() - start) / repeats
    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    ops = collections.Counter()
    for plane in _profile_data.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for ev in line.events:
                skip = ev.name.startswith(("ThunkExecutor", "end:")) or "Await" in ev.name
                if line.name.startswith("tf_XLA") and not skip:  # XLA's worker threads
                    ops[re.sub(r"[.\d]+$", "", ev.name)] += ev.duration_ns / 1e6 / repeats
    shutil.rmtree(trace_dir, ignore_errors=True)
    total = sum(ops.values())
    top = ", ".join(f"{k} {v:.0f} ms" for k, v in ops.most_common(6))
    print(
        f"profile {name} batch {images.shape[0]}: wall {wall * 1e3:.0f} ms, traced op time "
        f"{total:.0f} ms ({total / (wall * 1e3):.2f} cores busy); {top}"
    )


def main(argv):
    del argv
    paths = [p for p in _PATHS.value if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise app.UsageError(f"--paths: unknown {unknown}; expected any of {','.join(PATHS)}")
    batches = [int(b) for b in _BATCHES.value]
    threads = _THREADS.value or len(os.sched_getaffinity(0))
    logging.set_verbosity(logging.WARNING)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    names = ("background", "lane1", "lane2", "lane3", "lane4")
    config, model, variables, kwargs = model_and_variables(len(names))
    mean, std = tuple(config.data.mean_rgb), tuple(config.data.std_rgb)
    runners, versions = {}, {"jax": jax.__version__, "tensorflow": tf.__version__}
    export_dir = _EXPORT_DIR.value or tempfile.mkdtemp(prefix="infer_bench_")
    formats = [
        f for f, p in (("jax", "jax_export"), ("savedmodel",) * 2, ("tflite",) * 2) if p in paths
    ]
    export_seconds = None
    if formats or "tflite_fixed" in paths:
        meta = export.make_metadata(
            model_name="erfnet",
            class_names=names,
            image_hw=HW,
            mean_rgb=mean,
            std_rgb=std,
            crop_top=config.data.crop_top,
            dataset="culane",
            model_kwargs=kwargs,
        )
        start = time.perf_counter()
        written = {}
        if formats:
            summary = export.export_model(model, variables, meta, export_dir, formats, check=False)
            for fmt, reason in summary["failed"].items():
                print(f"export of {fmt} failed: {reason}")
            written = summary["paths"]
        export_seconds = time.perf_counter() - start
        if "jax" in written:
            runners["jax_export"] = deploy.load(written["jax"])
        if "savedmodel" in written:
            runners["savedmodel"] = savedmodel_runner(written["savedmodel"])
        if "tflite" in written:
            runners["tflite"] = tflite_runner(lambda b: written["tflite"], threads)
        if "tflite_fixed" in paths:
            fixed = {}
            for b in batches:
                out = os.path.join(export_dir, f"tflite_batch{b}")
                done = export.export_model(
                    model, variables, meta, out, "tflite", check=False, tflite_batch=b
                )
                if "tflite" in done["paths"]:
                    fixed[b] = done["paths"]["tflite"]
                else:
                    print(f"export of tflite at batch {b} failed: {done['failed']}")
            if len(fixed) == len(batches):
                runners["tflite_fixed"] = tflite_runner(fixed.__getitem__, threads)
    if "flax" in paths:
        runners["flax"] = flax_runner(model, variables, mean, std, _FLAX_IMPL.value)
    if "flax_tuned" in paths:
        runners["flax_tuned"] = flax_runner(
            model, variables, mean, std, _FLAX_IMPL.value, deploy.CPU_COMPILER_OPTIONS
        )
    if "torch" in paths:
        runners["torch"], versions["torch"] = torch_runner(
            variables, kwargs, len(names), mean, std, threads
        )
    order = [p for p in PATHS if p in runners]

    print(
        f"{datetime.date.today().isoformat()}  {cpu_name()}, {os.cpu_count()} cores visible, "
        f"{threads} threads, allocator: {allocator()}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; ERFNet {kwargs}")
    if formats:
        print(f"export of {','.join(formats)}: {export_seconds:.1f} s -> {export_dir}")
    best = {}
    for batch in batches:
        images = np.random.default_rng(batch).uniform(0, 255, (batch, *HW, 3)).astype(np.float32)
        outputs = {}
        for name in order:
            for _ in range(max(_WARMUP.value, 1)):
                outputs[name] = np.asarray(runners[name](images))
        reference = outputs.get("flax", outputs[order[0]])
        diffs = {n: float(np.max(np.abs(o - reference))) for n, o in outputs.items()}
        times = {n: [] for n in order}
        busy = {n: [] for n in order}
        clean = {n: 0 for n in order}
        for r in range(_ROUNDS.value):
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                seconds, cores, quiet = timed_run(
                    runners[name], images, _RETRIES.value, _FOREIGN.value
                )
                times[name].append(seconds)
                busy[name].append(cores)
                clean[name] += quiet
        med = {n: float(np.median(t)) for n, t in times.items()}
        torch_s = med.get("torch")
        print(f"\nbatch {batch}, {HW[0]}x{HW[1]}, medians of {_ROUNDS.value} rounds:\n")
        print(
            "| path | ms / batch | images/s | vs PyTorch | max abs diff vs flax | cores busy "
            "| quiet runs |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in order:
            ratio = f"{torch_s / med[name]:.2f}x" if torch_s else "-"
            print(
                f"| {name} | {med[name] * 1e3:.1f} | {batch / med[name]:.2f} | {ratio} | "
                f"{diffs[name]:.1e} | {np.median(busy[name]):.2f} | {clean[name]}/{_ROUNDS.value} |"
            )
        ours = [med[n] for n in order if n != "torch"]
        if torch_s and ours:
            best[batch] = torch_s / min(ours)
        if _PROFILE.value:
            for name in ("flax", "flax_tuned"):
                if name in runners:
                    xla_profile(name, runners[name], images)
    if best:
        print("\nbest_vs_torch: " + " ".join(f"b{b}={r:.2f}" for b, r in best.items()))
    if not _EXPORT_DIR.value:
        shutil.rmtree(export_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
