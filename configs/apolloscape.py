"""ApolloScape lane-marking segmentation (37 IntRA-KD classes).

Usage:
  python main.py --config=configs/apolloscape.py --config.data.data_dir=/data/apolloscape \
      --workdir=runs/apollo
  python main.py --config=configs/apolloscape.py:synthetic --workdir=runs/apollo_demo
  python main.py --config=configs/apolloscape.py:smoke --workdir=/tmp/smoke   # seconds; tests

Variants (the text after ':'):
  (none)     the real dataset with the IntRA-KD recipe: rows 1700..2709 kept, scaled by 0.5
             (505 x 1692), random 496 x 1488 crop (student; the teacher's 460 x 1380 crop is
             config.data.teacher_image_hw), rotation +-10 degrees with probability 0.5 (label fill
             255), class weights 0.05 for void (0) and noise/ignored (36), BGR mean in RGB order.
             Splits come from list/train.txt, list/val.txt, list/test.txt under data_dir when
             present (IntRA-KD's absolute /home/houyuenan/ApolloScapes/ paths are rewritten to
             data_dir), else from a scan of the folders (road05 = test, road04/Record015 and
             Record017 = valid, the rest = train).
  synthetic  writes a synthetic ApolloScape twin (exact on-disk format at 0.2 x the size) under
             data/synthetic/apolloscape if absent, and runs teacher -> baseline student ->
             distilled student -> comparison on a 2-core CPU, at 96 x 288 (the 1:3 recipe
             aspect).
  smoke      a tiny version of the synthetic run for tests.

The real-data teacher is the released IntRA-KD PSPNet (scale-series pyramid (10, 20, 30, 60),
PyTorch-0.3 bilinear resizes), so the authors' checkpoints fit it: evaluate
pspnet_46_6.pth.tar / erfnet_trained.pth.tar with --config.mode=evaluate
--config.checkpoint=<file> --config.checkpoint_arch=intrakd_pspnet|intrakd_erfnet
--config.eval.tta=official, or distil from the teacher file with --config.mode=distill
--config.teacher.checkpoint=pspnet_46_6.pth.tar --config.teacher.checkpoint_arch=intrakd_pspnet.
Pretrained starts as in the recipe: --config.teacher.init_from="('torchvision_resnet101',
'resnet101-5d3b4d8f.pth')" and --config.student.init_from="('erfnet_imagenet_encoder',
'erfnet_encoder_pretrained.pth.tar')" (README, "Pretrained and released weights").
"""

import ml_collections

from configs import default

NUM_CLASSES = 37
CLASS_WEIGHTS = tuple(0.05 if k in (0, NUM_CLASSES - 1) else 1.0 for k in range(NUM_CLASSES))


def _data_config() -> ml_collections.ConfigDict:
    # data_dir: the root with ColorImage_roadXX/ and Labels_roadXX/. skip_corrupt also skips
    # (and logs) list entries with problems.
    d = default.base_data_config("apolloscape")
    # auto: a split's list file when it exists, else a scan of the layout | lists | scan.
    d.split_source = "auto"
    d.list_files = ml_collections.ConfigDict(
        {"train": "list/train.txt", "valid": "list/val.txt", "test": "list/test.txt"}
    )  # relative to data_dir (IntRA-KD names its test list list/test_img.txt)
    # (old_prefix, new_prefix) applied to list paths; relative results are joined to data_dir.
    d.root_rewrite = ("/home/houyuenan/ApolloScapes/", "")
    d.scan_valid_records = ("road04/Record015", "road04/Record017")
    d.scan_test_roads = ("road05",)
    d.crop_top = 1700  # rows 1700..2709 kept (IntRA-KD)
    d.image_hw = (496, 1488)  # student crop (IntRA-KD ERFNet train_size 1488)
    # The teacher's crop (IntRA-KD PSPNet train_size 1380). The pipeline serves one image_hw;
    # a stage that trains the teacher can override image_hw with this value.
    d.teacher_image_hw = (460, 1380)
    d.class_weights = CLASS_WEIGHTS
    d.augment = ml_collections.ConfigDict(
        {
            "enabled": True,
            "scale_range": (0.5, 0.5),  # GroupRandomScale(0.5, 0.5) of the cropped frame
            "scale_of": "source",
            "rotation_deg": 10.0,
            "rotation_prob": 0.5,
            "hflip": False,  # the recipe does not flip; if True, left/right arrows swap
            "brightness": 0.0,
        }
    )
    # scale: frame size factor, 1 = 3384 x 2710 (crop_top must be 1700 * scale).
    d.synthetic = default.synthetic_config(num_train=32, num_valid=8, num_test=4, scale=1.0)
    return d


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    # IntRA-KD: 24 epochs at batch 8 over ~103.7k training frames (~311k steps).
    c = default.dataset_config(_data_config(), num_train_steps=311_000)
    # The released teacher's pyramid: scales (10, 20, 30, 60) of the 1/8 map instead of bins.
    c.teacher.model_kwargs.update(scale_series=(10, 20, 30, 60), align_corners=True)
    return default.apply_variant(c, variant, _synthetic, _smoke)


def _synthetic(c: ml_collections.ConfigDict) -> None:
    c.data.synthetic.update(num_train=160, num_valid=32, num_test=8, scale=0.2)
    c.data.crop_top = 340  # 1700 * 0.2: the 202 x 677 crop, scaled by 0.5 to 101 x 338
    c.data.image_hw = (96, 288)
    c.data.teacher_image_hw = (96, 288)
    # The default pyramid; the scale series (10, 20, 30, 60) is for the full-size images.
    c.teacher.model_kwargs.update(scale_series=(), align_corners=False)


def _smoke(c: ml_collections.ConfigDict) -> None:
    c.teacher.model_kwargs.update(scale_series=(), align_corners=False)
    c.data.synthetic.update(num_train=8, num_valid=4, num_test=2, scale=0.05)
    c.data.crop_top = 85  # 1700 * 0.05: the 51 x 169 crop
    c.data.image_hw = (32, 96)
    c.data.teacher_image_hw = (32, 96)
    c.data.augment.scale_range = (0.75, 0.75)  # 38 x 127, then the random 32 x 96 crop
