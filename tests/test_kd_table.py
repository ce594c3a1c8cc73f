"""benchmarks/kd_table.py on its smoke setting: the table's structure, statistics and resumption."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_table  # noqa: E402  (benchmarks/kd_table.py)

SETTING = kd_table.SETTINGS["smoke"]


def test_paired_difference_matches_a_hand_computation():
    d = kd_table.paired_difference([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    # Differences 0.1, 0.2, 0.0: mean 0.1, sample std 0.1, t(0.975, 2) = 4.303.
    assert d["mean"] == pytest.approx(0.1)
    assert d["std"] == pytest.approx(0.1)
    assert d["ci"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert not d["significant"]
    assert kd_table.paired_difference([0.9, 0.8, 0.85], [0.5, 0.5, 0.52])["significant"]
    one = kd_table.paired_difference([0.6], [0.5])
    assert one["std"] == 0.0 and math.isinf(one["ci"]) and not one["significant"]


def test_plan_orders_cells_and_rejects_unknown_names():
    cells = kd_table.plan(SETTING, ["culane"], ["erfnet"], ["baseline", "sad"], [0, 1], False)
    assert [(c.method, c.seed, c.stage) for c in cells] == [
        ("baseline", 0, "student"),
        ("baseline", 1, "student"),
        ("sad", 0, "distill"),
        ("sad", 1, "distill"),
    ]
    with_ablations = kd_table.plan(SETTING, ["culane"], ["erfnet"], ["baseline"], [0], True)
    assert {c.method for c in with_ablations} == {"baseline", *kd_table.ABLATIONS}
    with pytest.raises(ValueError, match="unknown 'intra-kd'"):
        kd_table.plan(SETTING, ["culane"], ["erfnet"], ["intra-kd"], [0], False)
    with pytest.raises(ValueError, match="unknown 'vgg'"):
        kd_table.plan(SETTING, ["culane"], ["vgg"], None, [0], False)


def test_cell_config_changes_only_the_method_and_seed():
    base = kd_table._base_config(SETTING, "culane", "/tmp/nowhere")
    a = kd_table.cell_config(
        SETTING, kd_table.Cell("culane", "erfnet", "baseline", 1), base, "t", 5
    )
    b = kd_table.cell_config(SETTING, kd_table.Cell("culane", "erfnet", "skd", 1), base, "t", 5)
    assert a.seed == b.seed == 1
    assert tuple(b.distill.terms) == ("skd_pixel", "skd_pair")
    flat_a, flat_b = a.to_dict(), b.to_dict()
    flat_a.pop("distill"), flat_b.pop("distill")
    assert flat_a == flat_b  # student, data, schedule and teacher are the same


def test_the_cache_hash_ignores_how_models_compute():
    base = kd_table._base_config(SETTING, "culane", "/tmp/nowhere")
    config = kd_table.cell_config(
        SETTING, kd_table.Cell("culane", "erfnet", "intra_kd", 0), base, "t", 5
    )
    fields = kd_table.CELL_FIELDS
    digest = kd_table.config_hash(config, fields)
    other = kd_table.ml_collections.ConfigDict(config.to_dict())
    other.teacher.model_kwargs.conv_impl = "xla"
    other.student.model_kwargs.erfnet.conv_impl = "fast"
    other.student.model_kwargs.erfnet.remat = True
    assert kd_table.config_hash(other, fields) == digest
    other.student.model_kwargs.erfnet.stage2_dropout = 0.25  # what it learns: a new hash
    assert kd_table.config_hash(other, fields) != digest


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd_table")
    cells = kd_table.plan(SETTING, ["culane"], ["erfnet"], ["baseline", "intra_kd"], [0, 1], False)
    results, teachers = kd_table.run_table(
        SETTING, cells, str(root / "work"), 2, data_root=str(root / "data")
    )
    return root, cells, results, teachers


def test_table_has_every_cell_with_its_statistics(table):
    root, cells, results, teachers = table
    assert [(r["method"], r["seed"]) for r in results] == [(c.method, c.seed) for c in cells]
    for r in results:
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["official"] <= 1.0
        assert r["params"] > 0 and r["train_seconds"] > 0
    # Fair starts: the two methods' students have the same architecture and size.
    assert len({r["params"] for r in results}) == 1
    text, payload = kd_table.summarize(results, teachers)
    assert "### culane twin, student erfnet" in text
    assert "Teacher pspnet" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["method", "seeds", "mIoU", "CULane F1"]
    assert "Δ mIoU vs baseline" in header
    rows = {r.split("|")[1].strip(): r for r in lines[1:]}
    assert set(rows) == {"baseline (CE only)", "IntRA-KD"}
    entry = payload["culane/erfnet"]["methods"]["intra_kd"]
    by_seed = {r["seed"]: r for r in results}
    base = [r["miou"] for r in results if r["method"] == "baseline"]
    ikd = [r["miou"] for r in results if r["method"] == "intra_kd"]
    assert entry["delta_miou"]["mean"] == pytest.approx(np.mean(np.subtract(ikd, base)))
    assert set(entry["seeds"]) == {0, 1} and by_seed


def test_a_killed_table_continues_with_the_missing_cells(table):
    root, cells, results, _ = table
    work = str(root / "work")
    missing = cells[-1]
    done = {c: Path(c.directory(work)) / "result.json" for c in cells}
    before = {c: p.stat().st_mtime_ns for c, p in done.items() if c != missing}
    # A run killed inside the last cell: its result and evaluation are not written yet.
    done[missing].unlink()
    again, _ = kd_table.run_table(SETTING, cells, work, 2, data_root=str(root / "data"))
    assert all(done[c].stat().st_mtime_ns == t for c, t in before.items())  # reused
    assert done[missing].exists()
    assert again[-1]["miou"] == pytest.approx(results[-1]["miou"])
    assert json.loads(done[missing].read_text())["method"] == missing.method


def _result(method, seed, official):
    return {
        "dataset": "culane",
        "student": "erfnet",
        "method": method,
        "seed": seed,
        "miou": official,
        "official": official,
        "params": 1000,
        "train_seconds": 1.0,
    }


def test_summary_compares_intra_kd_with_every_other_method(tmp_path):
    official = {
        "baseline": [0.50, 0.52, 0.54],
        "intra_kd": [0.60, 0.61, 0.65],
        "kd": [0.55, 0.60, 0.60],
    }
    results = [_result(m, s, v) for m, vs in official.items() for s, v in enumerate(vs)]
    teacher = {"model": "pspnet", "params": 5000, "num_train_steps": 9, "miou": 0.7}
    text, payload = kd_table.summarize(results, {"culane": {**teacher, "official": 0.7}})
    # IntRA-KD - KD per seed: 0.05, 0.01, 0.05 -> mean 0.03667, sample std 0.02309.
    d = payload["culane/erfnet"]["methods"]["kd"]["intra_kd_minus_this_official"]
    assert d["mean"] == pytest.approx(0.11 / 3)
    assert d["std"] == pytest.approx(
        math.sqrt(((0.05 - 0.11 / 3) ** 2 * 2 + (0.01 - 0.11 / 3) ** 2) / 2)
    )
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = header.index("IntRA-KD − this, CULane F1")
    kd_row = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert kd_row[0] == "KD (logits)" and kd_row[column].startswith("+0.037 ± 0.023")
    kd_table.write_results(
        str(tmp_path / "R.md"), "# head\n", text, {"results": results, **payload}
    )
    png = tmp_path / "R.png"
    assert (
        png.exists() and "![every seed of every method](R.png)" in (tmp_path / "R.md").read_text()
    )
    assert json.loads((tmp_path / "R.json").read_text())["labels"]["kd"] == "KD (logits)"


def test_a_changed_setting_does_not_reuse_cells(table):
    root, cells, _, _ = table
    with pytest.raises(kd_table.errors.ConfigError, match="another config"):
        kd_table.run_table(SETTING, cells, str(root / "work"), 3, data_root=str(root / "data"))
