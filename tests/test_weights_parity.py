"""Imported checkpoints give the PyTorch models' outputs (float32, eval mode).

For every arch a state dict with the real names and shapes (tests/data/weight_lists, from the
shared reference lists) gets random weights and BatchNorm statistics measured on images, is
loaded strictly into an independent PyTorch module (tests/weights_reference.py), saved the way
the real files are, imported, and run on the same images: the largest difference must stay
within 1e-4 of the largest |output|. Controls show that the comparisons can fail: the
PyTorch-0.3 resize semantics and the released pyramid's padding order both change the output
far beyond that.
"""

import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weights_reference as ref  # noqa: E402

from intrakd_jax import models, weights  # noqa: E402
from intrakd_jax.models import pspnet  # noqa: E402

TOLERANCE = 1e-4  # of the largest |output|


def relative_error(got_bhwc, want_nchw) -> float:
    want = np.asarray(want_nchw, np.float64).transpose(0, 2, 3, 1)
    got = np.asarray(got_bhwc, np.float64)
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


def apply(model, variables, images_nchw, reverse_channels=False):
    """The Flax model on the NCHW images (channels reversed first when asked)."""
    x = images_nchw.transpose(0, 2, 3, 1)
    if reverse_channels:
        x = x[..., ::-1]
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, np.ascontiguousarray(x))


def consumed_everything(report, state):
    used = len(report.imported) + len(report.unused) + len(report.counters)
    return used == len(state)


# ----------------------------------------------------------------------------------------------
# IntRA-KD ERFNet


@pytest.fixture(scope="module")
def intrakd_erfnet(tmp_path_factory):
    """The released ERFNet's layout: legacy (PyTorch 0.3-era) file, wrapper dict, module. prefix."""
    images = ref.bgr_images((2, 3, 32, 64), seed=0)
    module, state = ref.built(
        ref.ERFNet(37), "intrakd_erfnet_apolloscape37", ref.bgr_images((8, 3, 64, 128), seed=1)
    )
    path = tmp_path_factory.mktemp("erfnet") / "erfnet_trained.pth.tar"
    ref.save_like_release(state, path, epoch=12, arch="ERFNet", best_mIoU=np.float64(0.4348))
    with torch.no_grad():
        logits = module(torch.from_numpy(images)).numpy()
        encoder = module.encoder(torch.from_numpy(images)).numpy()
    return path, state, images, logits, encoder


@pytest.mark.parametrize("channel_order", ["bgr", "rgb"])
def test_intrakd_erfnet_matches_pytorch(intrakd_erfnet, channel_order):
    path, state, images, want_logits, want_encoder = intrakd_erfnet
    model, variables = weights.import_torch_checkpoint(
        str(path), "intrakd_erfnet", channel_order=channel_order
    )
    assert model.num_classes == 37 and model.reverse_input_channels == (channel_order == "rgb")
    logits, taps = apply(model, variables, images, reverse_channels=channel_order == "rgb")
    assert relative_error(logits, want_logits) <= TOLERANCE
    assert relative_error(taps["encoder"], want_encoder) <= TOLERANCE


def test_intrakd_erfnet_import_consumes_every_entry(intrakd_erfnet):
    path, state, *_ = intrakd_erfnet
    ckpt = weights.read_checkpoint(str(path))
    assert ckpt.meta == {"epoch": 12, "arch": "ERFNet", "best_mIoU": 0.4348}
    model = weights.arch_model("intrakd_erfnet", 37)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))
    variables, report = weights.load_into(abstract, ckpt, "intrakd_erfnet", model)
    assert consumed_everything(report, state) and not report.kept
    assert len(report.imported) == report.num_model_arrays == 304
    assert report.unused == ["encoder.output_conv.weight", "encoder.output_conv.bias"]
    # The transposed conv weight (in, out, kh, kw) becomes (kh, kw, out, in), not flipped.
    kernel = np.asarray(variables["params"]["decoder"]["output_conv"]["kernel"])
    want = state["decoder.output_conv.weight"].numpy()
    np.testing.assert_array_equal(kernel[1, 0, 5, 3], want[3, 5, 1, 0])


# ----------------------------------------------------------------------------------------------
# IntRA-KD PSPNet-ResNet-101


@pytest.fixture(scope="module")
def intrakd_pspnet(tmp_path_factory):
    """Released layout (zip file this time) at 145 x 80 -> 19 x 10 at 1/8, which every scale pads
    and the smallest map where the padding order matters: for s = 10 (pooled 2 x 1, 1 padding
    row, no padding column) the released order samples other pixels than the worded one (most
    sizes sample only zero padding there, e.g. 11 x 14)."""
    images = ref.bgr_images((1, 3, 145, 80), seed=2)
    module, state = ref.built(
        ref.IntraKDPSPNet(37),
        "intrakd_pspnet_resnet101_apolloscape37",
        ref.bgr_images((2, 3, 145, 80), seed=3),
    )
    path = tmp_path_factory.mktemp("pspnet") / "pspnet_46_6.pth.tar"
    ref.save_like_release(state, path, legacy=False, epoch=20)
    with torch.no_grad():
        x = torch.from_numpy(images)
        feats = module.base_model(x)
        logits = module(x).numpy()
        # Control: the pyramid as WEIGHTS.md words it (rows padded by the row amount).
        module.context_model.swap_padding = False
        head = module.classifier(module.context_model(feats["layer4"]))
        unswapped = ref.upsample_03(head, x.shape[2:]).numpy()
    return path, state, images, logits, {k: v.numpy() for k, v in feats.items()}, unswapped


def test_intrakd_pspnet_resnet101_matches_pytorch(intrakd_pspnet):
    path, state, images, want, feats, unswapped = intrakd_pspnet
    ckpt = weights.read_checkpoint(str(path))
    model, variables = weights.import_checkpoint(ckpt, "intrakd_pspnet")
    assert (model.depth, model.scale_series, model.align_corners) == (101, (10, 20, 30, 60), True)
    logits, taps = apply(model, variables, images, reverse_channels=True)  # RGB input
    assert relative_error(logits, want) <= TOLERANCE
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert relative_error(taps[name], feats[name]) <= TOLERANCE, name
    # Controls: the padding order and the resize semantics both matter at this size.
    assert relative_error(logits, unswapped) > 100 * TOLERANCE
    half_pixel = dataclasses.replace(model, align_corners=False)
    half_pixel_logits, _ = apply(half_pixel, variables, images, reverse_channels=True)
    assert relative_error(half_pixel_logits, want) > 100 * TOLERANCE
    _, report = weights.load_into(variables, ckpt, "intrakd_pspnet", model)
    assert consumed_everything(report, state) and not report.kept and not report.unused
    assert len(report.imported) == report.num_model_arrays == 547


# ----------------------------------------------------------------------------------------------
# ImageNet initialisations


@pytest.mark.parametrize(
    ("depth", "channel_order"), [(18, "rgb"), (18, "bgr"), (34, "rgb"), (50, "rgb"), (101, "rgb")]
)
def test_torchvision_resnet_backbone_matches_pytorch(tmp_path, depth, channel_order):
    """Plain state dict (the download.pytorch.org files) into the dilated backbone; fc unused."""
    rgb = ref.bgr_images((1, 3, 33, 41), seed=depth)  # any smooth 3-channel input will do
    module, state = ref.built(
        ref.DilatedResNet(depth),
        f"torchvision_resnet{depth}",
        ref.bgr_images((4, 3, 33, 41), seed=depth + 1),
    )
    path, arch = str(tmp_path / f"resnet{depth}.pth"), f"torchvision_resnet{depth}"
    torch.save(state, path)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in module(torch.from_numpy(rgb)).items()}
    # The backbone of the teacher and of the ResNet students alone (compiles in a fraction of
    # the whole model's time); test_backbone_arch_gives_a_model_with_a_random_head does the rest.
    backbone = models.DilatedResNet(depth=depth)
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), np.zeros((1, 32, 32, 3))))
    wrapped = {k: {"backbone": v} for k, v in shapes.items()}
    ckpt = weights.read_checkpoint(path)
    variables, report = weights.load_into(
        wrapped, ckpt, arch, backbone, channel_order=channel_order
    )
    assert consumed_everything(report, state) and not report.kept
    assert report.unused == ["fc.weight", "fc.bias"]
    # The model reads ``channel_order`` images; the checkpoint was trained on RGB.
    unwrapped = {k: v["backbone"] for k, v in variables.items()}
    taps = apply(backbone, unwrapped, rgb, reverse_channels=channel_order == "bgr")
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert relative_error(taps[name], want[name]) <= TOLERANCE, name


@pytest.mark.parametrize(("depth", "model_name"), [(18, "ResNetStudent"), (50, "PSPNet")])
def test_backbone_arch_gives_a_model_with_a_random_head(tmp_path, depth, model_name):
    state = ref.random_state_dict(ref.reference_entries(f"torchvision_resnet{depth}"))
    torch.save(state, tmp_path / "resnet.pth")
    arch = f"torchvision_resnet{depth}"
    with pytest.raises(weights.WeightsError, match="no classifier; pass num_classes"):
        weights.import_torch_checkpoint(str(tmp_path / "resnet.pth"), arch)
    model, variables = weights.import_torch_checkpoint(
        str(tmp_path / "resnet.pth"), arch, num_classes=5
    )
    assert type(model).__name__ == model_name and model.depth == depth
    conv1 = variables["params"]["backbone"]["conv1"]["kernel"]
    np.testing.assert_array_equal(conv1, state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    assert variables["params"]["classifier"]["kernel"].shape[-1] == 5  # initialised, random
    assert float(np.abs(variables["params"]["classifier"]["kernel"]).max()) > 0


def test_erfnet_imagenet_encoder_matches_pytorch(tmp_path):
    """Eromera's file: module. prefix, features.encoder.*, other order inside each block."""
    images = ref.bgr_images((1, 3, 32, 64), seed=5)  # the channel order does not matter here
    module, state = ref.built(
        ref.ImageNetERFNet(),
        "eromera_erfnet_imagenet_encoder_1000",
        ref.bgr_images((8, 3, 64, 128), seed=6),
    )
    ref.save_like_release(  # Eromera's wrapper, optimizer state included
        state,
        tmp_path / "erfnet_encoder_pretrained.pth.tar",
        epoch=90,
        arch="erfnet",
        best_prec1=72.1,
        optimizer={"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
    )
    with torch.no_grad():
        want = module(torch.from_numpy(images)).numpy()
    path, arch = str(tmp_path / "erfnet_encoder_pretrained.pth.tar"), "erfnet_imagenet_encoder"
    model, variables = weights.import_torch_checkpoint(path, arch, num_classes=5)
    assert not model.reverse_input_channels  # RGB weights for the project's RGB input
    _, taps = apply(model, variables, images)
    assert relative_error(taps["encoder"], want) <= TOLERANCE
    _, report = weights.load_into(variables, weights.read_checkpoint(path), arch, model)
    assert consumed_everything(report, state)
    assert report.unused == ["classifier.linear.weight", "classifier.linear.bias"]
    assert report.kept and all(k.split("/")[1] == "decoder" for k in report.kept)


# ----------------------------------------------------------------------------------------------
# The resizes and options behind the released PSPNet


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(("size_in", "size_out"), [(7, 3), (3, 7), (5, 1), (1, 4), (6, 6)])
def test_bilinear_resize_matches_pytorch(align_corners, size_in, size_out):
    """Up and down (no antialiasing), both corner conventions, sizes of 1 included."""
    x = np.random.default_rng(0).normal(size=(2, 3, size_in, size_in + 1)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x),
        size=(size_out, size_out + 2),
        mode="bilinear",
        align_corners=align_corners,
    ).numpy()
    got = pspnet.torch_resize_bilinear(
        x.transpose(0, 2, 3, 1), (size_out, size_out + 2), align_corners
    )
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_series": (10, 0)}, r"PSPNet\.scale_series must be a tuple of ints >= 1"),
        ({"scale_series": (1.5,)}, r"PSPNet\.scale_series"),
        ({"align_corners": "yes"}, r"PSPNet\.align_corners must be a bool"),
    ],
)
def test_pspnet_pyramid_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.get_model("pspnet", num_classes=5, depth=18, base_width=4, **kwargs)
