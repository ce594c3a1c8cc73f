"""Faults a long training job meets: a loss that turns NaN, a full disk, an unwritable workdir.

Each test injects the fault into a real (tiny) student stage and checks what the user is left
with: a clear error naming where and what, the newest checkpoint complete and from before the
fault, and a resume that reaches the same parameters as a run that never met it. The
reference is an uninterrupted run in this process; results are compared bit for bit.
"""

import asyncio
import contextlib
import errno
import itertools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from checkpoint_reference import saved_state, saved_steps

from configs import llamas as llamas_config
from intrakd_jax import checkpointing, stage, train
from intrakd_jax.errors import ConfigError, StorageError
from intrakd_jax.evaluation import report

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def _config(data_dir: Path, **overrides):
    c = llamas_config.get_config("smoke")
    c.data.data_dir = str(data_dir)
    c.mode = "student"
    c.student.num_train_steps = STEPS
    c.checkpoint_every_steps = 1
    c.max_checkpoints_to_keep = STEPS + 1
    c.log_every_steps = 4
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (it also writes the synthetic data): (data dir, stage dir)."""
    root = tmp_path_factory.mktemp("reference")
    train.train_and_evaluate(_config(root / "data"), str(root / "work"))
    return root / "data", root / "work" / "student"


def _assert_same(a, b) -> None:
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def _poison(monkeypatch, bad_steps) -> None:
    """Training images of ``bad_steps`` (1-based global steps) become NaN."""
    original = stage._stage_batches

    def poisoned(s, start_step):
        batches = original(s, start_step)
        for step in itertools.count(start_step + 1):
            batch = next(batches)
            if step in bad_steps:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    monkeypatch.setattr(stage, "_stage_batches", poisoned)


# ----------------------------------------------------------------------------------------------
# Bad numbers
# ----------------------------------------------------------------------------------------------


def test_nonfinite_loss_stops_keeps_the_last_good_checkpoint_and_resumes(
    reference, tmp_path, monkeypatch
):
    data_dir, ref_dir = reference
    work = tmp_path / "work"
    # Checkpoints every 3 steps, log lines every 4: the NaN of step 7 is found before the save
    # of step 9, so the newest checkpoint stays step 6.
    config = _config(data_dir, checkpoint_every_steps=3)
    _poison(monkeypatch, {7})
    with pytest.raises(stage.NonFiniteLoss) as info:
        train.train_and_evaluate(config, str(work))
    message = str(info.value)
    assert info.value.step == 7
    assert "non-finite ce at step 7" in message
    assert "last finite step 6" in message and "newest checkpoint (step 6)" in message
    report = json.loads((work / "student" / "nonfinite.json").read_text())
    assert report["step"] == 7 and report["last_good_checkpoint"] == 6
    assert {"ce", "loss", "grad_norm"} <= set(report["nonfinite"])
    assert report["last_finite_step"] == 6
    assert all(np.isfinite(v) for v in report["last_finite_values"].values())
    assert saved_steps(work / "student") == [3, 6]
    _assert_same(saved_state(ref_dir, 6, newest=False), saved_state(work / "student", 6))

    monkeypatch.undo()  # the data is fine again: the same command resumes from step 6
    train.train_and_evaluate(config, str(work))
    _assert_same(saved_state(ref_dir, STEPS), saved_state(work / "student", STEPS))


def test_skipped_nonfinite_steps_leave_the_state_and_are_capped(reference, tmp_path, monkeypatch):
    data_dir, ref_dir = reference
    work = tmp_path / "work"
    config = _config(data_dir, **{"optim.skip_nonfinite_steps": 2})
    _poison(monkeypatch, {4, 8, 10})
    with pytest.raises(stage.NonFiniteLoss) as info:
        train.train_and_evaluate(config, str(work))
    assert info.value.step == 10
    assert "after skipping 2 (steps [4, 8], the cap)" in str(info.value)
    stage_dir = work / "student"
    assert saved_steps(stage_dir)[-1] == 9
    # A skipped step changes nothing but the step counter.
    before, skipped = (saved_state(stage_dir, k, newest=False) for k in (3, 4))
    assert int(skipped["step"]) == 4
    _assert_same({k: v for k, v in before.items() if k != "step"},
                 {k: v for k, v in skipped.items() if k != "step"})  # fmt: skip
    # Steps before the first bad one are the reference's; the next real update differs.
    _assert_same(saved_state(ref_dir, 3, newest=False), before)
    after = saved_state(stage_dir, 5, newest=False)
    assert not np.array_equal(
        jax.tree.leaves(after["params"])[0], jax.tree.leaves(skipped["params"])[0]
    )
    report = json.loads((stage_dir / "nonfinite.json").read_text())
    assert report["skipped_steps"] == [4, 8] and report["max_skips"] == 2


@pytest.mark.parametrize("value", [-1, True])
def test_skip_nonfinite_steps_must_be_a_count(reference, tmp_path, value):
    config = _config(reference[0], **{"optim.skip_nonfinite_steps": 0})
    config.optim.skip_nonfinite_steps = value  # the config types reject floats and strings
    with pytest.raises(ConfigError, match="skip_nonfinite_steps"):
        train.train_and_evaluate(config, str(tmp_path / "work"))


def test_diverging_run_exits_with_one_clear_message(reference, tmp_path):
    # A learning rate of 1e30 overflows the parameters at once: a real divergence, through main.py.
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/llamas.py:smoke",
            "--config.mode=student",
            f"--config.data.data_dir={reference[0]}",
            "--config.student.learning_rate=1e30",
            "--config.student.num_train_steps=6",
            f"--workdir={tmp_path / 'work'}",
        ],
        cwd=ROOT,
        env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: NonFiniteLoss: [student] non-finite"), last
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "work" / "student" / "nonfinite.json").exists()


# ----------------------------------------------------------------------------------------------
# Storage faults: a real small (or read-only) tmpfs as the workdir
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (needs root, as in CI); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_a_checkpoint_save_is_clear_and_the_run_resumes(reference, tmp_path):
    data_dir, ref_dir = reference
    # ~1 MB a checkpoint, all kept: the 6 MB disk fills a few steps in.
    with _tmpfs(tmp_path / "disk", "size=6m") as disk:
        work = disk / "work"
        config = _config(data_dir)
        with pytest.raises(StorageError) as info:
            train.train_and_evaluate(config, str(work))
        message = str(info.value)
        stage_dir = work / "student"
        complete = saved_steps(stage_dir)
        assert complete and complete[-1] < STEPS, complete
        assert f"could not write a checkpoint under {stage_dir}" in message
        assert "No space left on device" in message
        assert f"the newest complete checkpoint is step {complete[-1]}, kept" in message
        # The newest complete checkpoint is intact and is the reference's state of that step.
        _assert_same(saved_state(ref_dir, complete[-1], newest=False),
                     saved_state(stage_dir, complete[-1]))  # fmt: skip
        half = list((stage_dir / checkpointing.LATEST_DIR).glob("*.orbax-checkpoint-tmp*"))

        # More space, the same command: it resumes from that checkpoint and ends where an
        # uninterrupted run ends; the half-written save is gone.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        train.train_and_evaluate(config, str(work))
        _assert_same(saved_state(ref_dir, STEPS), saved_state(stage_dir, STEPS))
        assert half and not any(p.exists() for p in half)
        assert (stage_dir / "eval_valid.json").exists()


def test_a_failed_save_drops_only_its_late_write_callbacks(monkeypatch):
    # A save cut short by a full disk leaves tensorstore writes in flight that report to the
    # closed event loop (hundreds of tracebacks before the one-line error, and flaky pytest
    # failures); only those are dropped.
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpointing._quiet_late_write_callbacks()
    checkpointing._quiet_late_write_callbacks()  # installed once

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        late = e

    def unraisable(exc, obj=None):
        return types.SimpleNamespace(
            exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
            err_msg=None, object=obj,
        )  # fmt: skip

    sys.unraisablehook(unraisable(late))
    assert seen == []
    others = [
        unraisable(RuntimeError("Event loop is closed")),  # not from a late callback
        unraisable(late, obj=loop),  # an object's finaliser
        unraisable(ValueError("in a __del__")),
    ]
    for u in others:
        sys.unraisablehook(u)
    assert seen == others


def test_disk_full_during_a_report_write_leaves_no_partial_file(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        (disk / "filler").write_bytes(b"\0" * 60 * 1024)
        target = disk / "eval_valid.json"
        with pytest.raises(OSError) as info:
            report.write_json(target, {"values": list(range(20000))})
        assert info.value.errno == errno.ENOSPC
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no half file, no temp


def test_disk_full_at_the_final_report_is_clear_and_the_rerun_finishes(
    reference, tmp_path, monkeypatch
):
    data_dir, ref_dir = reference
    work = tmp_path / "work"
    config = _config(data_dir)
    real = stage.report.write_report

    def full(out_dir, name, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out_dir, name))

    monkeypatch.setattr(stage.report, "write_report", full)
    with pytest.raises(StorageError, match=r"could not write .*eval_valid: No space left"):
        train.train_and_evaluate(config, str(work))
    # Every step is in the final checkpoint; the rerun only evaluates and writes the report.
    assert saved_steps(work / "student")[-1] == STEPS
    monkeypatch.setattr(stage.report, "write_report", real)
    train.train_and_evaluate(config, str(work))
    assert (work / "student" / "eval_valid.json").exists()
    _assert_same(saved_state(ref_dir, STEPS), saved_state(work / "student", STEPS))


def test_unwritable_workdir_is_a_clear_error_before_anything_runs(reference, tmp_path):
    config = _config(reference[0])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=r"--workdir=.*a_file/work is not writable: Not a direc"):
        train.train_and_evaluate(config, str(blocker / "work"))
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(StorageError, match=r"is not writable: Read-only file system"):
            train.train_and_evaluate(config, str(ro / "work"))


def test_main_reports_a_storage_error_in_one_line(reference, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "main.py", "--config=configs/llamas.py:smoke", "--config.mode=student",
         f"--config.data.data_dir={reference[0]}", f"--workdir={blocker / 'work'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: StorageError: --workdir=")
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# Changed hardware is tested in tests/test_train.py (4 -> 2 -> 1 devices); a changed model is not
# resumable and says so
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"student.model_kwargs.erfnet.channels": (4, 8, 24)},
            r"holds erfnet .*'channels': \[4, 8, 16\].* but the config asks for erfnet .*4, 8, 24",
        ),
        ({"data.label_type": "binary"}, r"holds a 5-class erfnet, but the config asks for 2 cl"),
    ],
)
def test_resuming_another_architecture_or_class_count_is_a_clear_error(
    reference, tmp_path, overrides, message
):
    data_dir, ref_dir = reference
    work = tmp_path / "work"
    shutil.copytree(ref_dir, work / "student")
    (work / "student" / "eval_valid.json").unlink()  # unfinished: it would resume
    config = _config(data_dir, **overrides)
    with pytest.raises(checkpointing.CheckpointError, match=message) as info:
        train.train_and_evaluate(config, str(work))
    assert "use another --workdir" in str(info.value)


def test_resuming_with_another_conv_impl_or_remat_is_allowed(reference, tmp_path):
    # How a model computes is not its architecture: a run may move to conv_impl="xla" (e.g. onto
    # a GPU) or turn on rematerialisation to fit memory, and resume.
    data_dir, ref_dir = reference
    work = tmp_path / "work"
    shutil.copytree(ref_dir, work / "student")
    (work / "student" / "eval_valid.json").unlink()
    overrides = {"student.model_kwargs.erfnet.conv_impl": "xla",
                 "student.model_kwargs.erfnet.remat": True}  # fmt: skip
    metrics = train.train_and_evaluate(_config(data_dir, **overrides), str(work))
    assert np.isfinite(metrics["miou"])
    assert (work / "student" / "eval_valid.json").exists()
