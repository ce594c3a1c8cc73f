"""Reading checkpoint files: the layouts real files come in, and clear errors for bad ones.

State dicts carry the real names and shapes (tests/data/weight_lists) with random values.
"""

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import weights_reference as ref  # noqa: E402

from intrakd_jax import models, weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def erfnet_state():
    return ref.random_state_dict(ref.reference_entries("intrakd_erfnet_apolloscape37"))


@pytest.fixture(scope="module")
def erfnet_abstract():
    """The released ERFNet's abstract variables (nothing computed) for BGR input."""
    model = weights.arch_model("intrakd_erfnet", 37, channel_order="bgr")
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))
    return model, shapes


def save(obj, path: Path, legacy: bool = False) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def save_safetensors(state, path: Path) -> str:
    safetensors_numpy.save_file({k: v.numpy() for k, v in state.items()}, str(path))
    return str(path)


def prefixed(state):
    return {"module." + k: v for k, v in state.items()}


LAYOUTS = {
    "raw state_dict, zip": lambda s, d: save(s, d / "a.pth"),
    "wrapper of the released files, legacy format": lambda s, d: save(
        {"epoch": 3, "arch": "ERFNet", "state_dict": prefixed(s), "best_mIoU": np.float64(0.43)},
        d / "a.pth.tar",
        legacy=True,
    ),
    "model wrapper, .pt": lambda s, d: save({"model": s, "step": 5}, d / "a.pt"),
    "with num_batches_tracked": lambda s, d: save(
        {**s, "encoder.initial_block.bn.num_batches_tracked": torch.tensor(7)}, d / "b.pth"
    ),
    "half precision": lambda s, d: save({k: v.half() for k, v in s.items()}, d / "h.pth"),
    "safetensors": lambda s, d: save_safetensors(prefixed(s), d / "a.safetensors"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_gives_the_same_arrays(tmp_path, erfnet_state, erfnet_abstract, layout):
    path = LAYOUTS[layout](erfnet_state, tmp_path)
    ckpt = weights.read_checkpoint(path)
    # The prefix is gone; the file order is kept (safetensors stores names sorted).
    order = sorted if layout == "safetensors" else list
    assert list(ckpt.arrays) == order(erfnet_state)
    want = erfnet_state
    if layout == "half precision":  # read as float32 values of the half-precision numbers
        want = {k: v.half().float() for k, v in erfnet_state.items()}
    for name, array in ckpt.arrays.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, want[name].numpy())
    if layout == "with num_batches_tracked":
        assert ckpt.counters == ("encoder.initial_block.bn.num_batches_tracked",)
    if layout == "wrapper of the released files, legacy format":
        assert ckpt.meta == {"epoch": 3, "arch": "ERFNet", "best_mIoU": 0.43}
    model, abstract = erfnet_abstract
    variables, report = weights.load_into(
        abstract, ckpt, "intrakd_erfnet", model, channel_order="bgr"
    )
    assert len(report.imported) == 304 and len(report.unused) == 2 and not report.kept
    kernel = variables["params"]["encoder"]["layers_1"]["conv3x1_1"]["kernel"]
    conv = want["encoder.layers.1.conv3x1_1.weight"].numpy()  # (out, in, 3, 1)
    np.testing.assert_array_equal(kernel, conv.transpose(2, 3, 1, 0))
    var = variables["batch_stats"]["decoder"]["layers_3"]["bn"]["var"]
    np.testing.assert_array_equal(var, want["decoder.layers.3.bn.running_var"].numpy())
    scale = variables["params"]["decoder"]["layers_3"]["bn"]["scale"]
    np.testing.assert_array_equal(scale, want["decoder.layers.3.bn.weight"].numpy())


def test_suffixes():
    assert weights.is_torch_checkpoint("/x/pspnet_46_6.PTH.tar")
    assert weights.is_torch_checkpoint("m.safetensors") and weights.is_torch_checkpoint("m.pt")
    assert not weights.is_torch_checkpoint("runs/demo/teacher") and not weights.is_torch_checkpoint(
        None
    )
    assert weights.checkpoint_stem("pspnet_46_6.pth.tar") == "pspnet_46_6"
    assert weights.checkpoint_stem("runs") == "runs"


def _blocked_torch(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` where importing torch fails, as on an install without PyTorch."""
    prelude = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torch":
                    raise ImportError("torch is not installed")

        sys.meta_path.insert(0, Block())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_safetensors_files_need_no_torch(tmp_path, erfnet_state):
    path = LAYOUTS["safetensors"](erfnet_state, tmp_path)
    pth = LAYOUTS["raw state_dict, zip"](erfnet_state, tmp_path)
    result = _blocked_torch(
        f"""
        from intrakd_jax.weights import readers
        ckpt = readers.read_checkpoint({path!r})
        assert len(ckpt.arrays) == 306, len(ckpt.arrays)
        try:
            readers.read_checkpoint({pth!r})
        except readers.WeightsError as e:
            print(e)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"reading {pth} needs PyTorch: pip install torch" in result.stdout


# ----------------------------------------------------------------------------------------------
# Bad files


def _truncated(path: str) -> str:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("raw state_dict, zip", "cannot be read as a PyTorch checkpoint"),
        ("wrapper of the released files, legacy format", "cannot be read as a PyTorch checkpoint"),
        ("safetensors", "cannot be read as a safetensors file"),
    ],
)
def test_truncated_files_name_the_file(tmp_path, erfnet_state, layout, message):
    path = _truncated(LAYOUTS[layout](erfnet_state, tmp_path))
    with pytest.raises(weights.WeightsError, match=message) as err:
        weights.read_checkpoint(path)
    assert path in str(err.value) and "truncated" in str(err.value)


def test_pickled_objects_are_refused_by_weights_only(tmp_path, erfnet_state):
    path = save(
        {"state_dict": erfnet_state, "args": argparse.Namespace(lr=0.01)}, tmp_path / "p.pth"
    )
    with pytest.raises(
        weights.WeightsError, match=r"argparse\.Namespace.*weights_only=True"
    ) as err:
        weights.read_checkpoint(path)
    assert path in str(err.value) and "expected a checkpoint of tensors" in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(3)], r"expected a state_dict .* found list"),
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, r"found \['epoch', 'optimizer'\]"),
        ({"a.weight": torch.zeros(2, dtype=torch.int32)}, "dtype int32; expected floating"),
    ],
)
def test_files_without_a_state_dict_say_what_was_expected(tmp_path, content, message):
    path = save(content, tmp_path / "x.pth")
    with pytest.raises(weights.WeightsError, match=message) as err:
        weights.read_checkpoint(path)
    assert path in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(weights.WeightsError, match=r"nowhere\.pth does not exist"):
        weights.read_checkpoint(str(tmp_path / "nowhere.pth"))


# ----------------------------------------------------------------------------------------------
# Files that do not fit the arch


def test_a_checkpoint_of_another_arch_lists_what_does_not_fit(tmp_path, erfnet_state):
    path = save(erfnet_state, tmp_path / "erfnet.pth")
    with pytest.raises(weights.WeightsError) as err:
        weights.import_torch_checkpoint(path, "intrakd_pspnet", num_classes=37)
    text = str(err.value)
    assert path in text and "does not fit arch 'intrakd_pspnet'" in text
    assert "306 checkpoint arrays have no place in the model: encoder.initial_block.conv" in text
    assert "547 model arrays are missing from the checkpoint: base_model.bn1.bias (64,)" in text
    assert "Known archs: intrakd_erfnet, intrakd_pspnet" in text


def test_a_smaller_resnet_lists_the_missing_blocks(tmp_path):
    state = ref.random_state_dict(ref.reference_entries("torchvision_resnet18"))
    path = save(state, tmp_path / "resnet18.pth")
    backbone = models.DilatedResNet(depth=34)
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))
    wrapped = {k: {"backbone": v} for k, v in shapes.items()}
    with pytest.raises(
        weights.WeightsError, match=r"80 model arrays are missing .*: layer1\.2\.bn1\.bias \(64,\)"
    ):
        weights.load_into(wrapped, weights.read_checkpoint(path), "torchvision_resnet34", backbone)


def test_shapes_that_differ_are_listed_with_both_shapes(tmp_path, erfnet_abstract):
    model, abstract = erfnet_abstract
    entries = ref.reference_entries("intrakd_erfnet_apolloscape37")
    five = [(k, (16, 5, 2, 2) if k == "decoder.output_conv.weight" else s) for k, s in entries]
    five = [(k, (5,) if k == "decoder.output_conv.bias" else s) for k, s in five]
    path = save(ref.random_state_dict(five), tmp_path / "five.pth")
    ckpt = weights.read_checkpoint(path)
    with pytest.raises(weights.WeightsError) as err:
        weights.load_into(abstract, ckpt, "intrakd_erfnet", model, channel_order="bgr")
    text = str(err.value)
    assert "2 arrays differ in shape" in text
    assert (
        "decoder.output_conv.weight: checkpoint (16, 5, 2, 2), model expects (16, 37, 2, 2)" in text
    )
    with pytest.raises(weights.WeightsError, match="predicts 5 classes, but 37 were asked for"):
        weights.import_torch_checkpoint(path, "intrakd_erfnet", num_classes=37)
    # Fine-tuning to another class count: the classifier keeps its initialisation.
    init = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))
    variables, report = weights.load_into(
        init, ckpt, "intrakd_erfnet", model, channel_order="bgr", new_head_ok=True
    )
    assert len(report.imported) == 302 and len(report.kept) == 2
    assert sorted(k.split(":")[0] for k in report.kept) == [
        "params/decoder/output_conv/bias",
        "params/decoder/output_conv/kernel",
    ]
    np.testing.assert_array_equal(
        variables["params"]["decoder"]["output_conv"]["kernel"],
        init["params"]["decoder"]["output_conv"]["kernel"],
    )


def test_a_missing_array_is_named(tmp_path, erfnet_state, erfnet_abstract):
    model, abstract = erfnet_abstract
    state = {k: v for k, v in erfnet_state.items() if k != "encoder.layers.3.bn1.running_var"}
    ckpt = weights.read_checkpoint(save(state, tmp_path / "m.pth"))
    missing = (
        r"1 model arrays are missing from the checkpoint: encoder\.layers\.3\.bn1\.running_var"
    )
    with pytest.raises(weights.WeightsError, match=missing + r" \(64,\)"):
        weights.load_into(abstract, ckpt, "intrakd_erfnet", model, channel_order="bgr")


def test_channel_order_and_arch_errors(tmp_path, erfnet_state, erfnet_abstract):
    model, abstract = erfnet_abstract  # reverse_input_channels=False: reads BGR
    ckpt = weights.read_checkpoint(save(erfnet_state, tmp_path / "e.pth"))
    with pytest.raises(weights.WeightsError, match=r"needs reverse_input_channels=True"):
        weights.load_into(abstract, ckpt, "intrakd_erfnet", model, channel_order="rgb")
    with pytest.raises(weights.WeightsError, match=r"channel_order must be one of"):
        weights.load_into(abstract, ckpt, "intrakd_erfnet", model, channel_order="RGB")
    with pytest.raises(weights.WeightsError, match=r"unknown checkpoint arch 'erfnet'; known"):
        weights.load_into(abstract, ckpt, "erfnet", model)
