"""CULane lane segmentation (4 lane slots + background, laneseg_label_w16 labels).

Usage:
  python main.py --config=configs/culane.py --config.data.data_dir=/data/CULane --workdir=runs/c
  python main.py --config=configs/culane.py:synthetic --workdir=runs/culane_demo  # 2-core CPU
  python main.py --config=configs/culane.py:smoke --workdir=/tmp/smoke           # seconds; tests

Lists written on another machine with absolute paths:
  --config.data.root_rewrite="('/home/someone/CULane', '')"

Variants (the text after ':'):
  (none)     the real dataset with the official ERFNet-CULane recipe (DATASETS.md 1.7): rows 0..239
             cropped, 976x208 input, class weights (0.4, 1, 1, 1, 1), random scale 0.595..0.621 of
             the cropped 1640x350 frame then a random 976x208 crop, rotation of +-1 degree with
             probability 0.5 (label fill 255), no flip, BGR mean (103.939, 116.779, 123.68) with
             std 1 (given here in RGB order), batch 12 and 12 epochs (88,880 steps).
  synthetic  writes a synthetic CULane twin (exact on-disk format, 1640x590) under
             data/synthetic/culane if absent, and runs teacher -> baseline student -> distilled
             student -> comparison on a 2-core CPU.
  smoke      a tiny version of the synthetic run for tests (164x59 frames).

Pretrained starts as in the recipe (ImageNet files, README "Pretrained and released weights"):
  --config.teacher.init_from="('torchvision_resnet101', 'resnet101-5d3b4d8f.pth')"
  --config.student.init_from="('erfnet_imagenet_encoder', 'erfnet_encoder_pretrained.pth.tar')"
"""

import ml_collections
from ml_collections import config_dict

from configs import default

CLASS_NAMES = ("background", "lane1", "lane2", "lane3", "lane4")
SOURCE_WH = (1640, 590)
CROP_TOP = 240
OFFICIAL_HW = (208, 976)
OFFICIAL_SCALE = (0.595, 0.621)  # GroupRandomScale factors of the cropped 1640x350 frame


def _data_config() -> ml_collections.ConfigDict:
    # data_dir: the root with driver_*/, laneseg_label_w16/ and list/. Splits (train_split,
    # eval_split): train | valid | test | test0_normal .. test8_night (the nine test categories).
    d = default.base_data_config("culane")
    # (old_prefix, new_prefix): list paths starting with old_prefix get new_prefix instead
    # (relative to data_dir, usually ''), for lists with absolute paths from another machine.
    d.root_rewrite = config_dict.placeholder(tuple)
    d.crop_top = CROP_TOP  # official: rows 0..239 dropped (VERTICAL_CROP_SIZE)
    d.image_hw = OFFICIAL_HW
    d.class_weights = (0.4, 1.0, 1.0, 1.0, 1.0)
    d.augment = ml_collections.ConfigDict(
        {
            "enabled": True,
            # Official GroupRandomScale multiplies the cropped source (1640x350); the random crop
            # to image_hw follows (at 0.595 the scaled frame is exactly 976x208).
            "scale_range": OFFICIAL_SCALE,
            "scale_of": "source",
            "rotation_deg": 1.0,
            "rotation_prob": 0.5,  # official GroupRandomRotation rotates half of the samples
            "hflip": False,  # if True, lane slots 1<->4 and 2<->3 are swapped with the image
            "brightness": 0.0,
        }
    )
    d.synthetic = default.synthetic_config(
        num_train=64, num_valid=16, num_test=18, image_wh=SOURCE_WH
    )
    return d


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    # ERFNet-CULane-PyTorch train_erfnet.sh: batch 12, 12 epochs of the 88,880 training frames.
    c = default.dataset_config(_data_config(), num_train_steps=88_880)
    c.batch_size = 12
    return default.apply_variant(c, variant, _synthetic, _smoke)


def _synthetic(c: ml_collections.ConfigDict) -> None:
    c.data.synthetic.update(num_train=160, num_valid=32, num_test=18)
    # The 1640x350 crop keeps CULane's aspect 4.69 at about the LLAMAS demo's pixel count.
    c.data.image_hw = (72, 336)
    # The official scale range relative to the network input (976 / 1640 = 0.595), so the
    # jitter is the official one at this smaller input.
    c.data.augment.scale_range = tuple(s * SOURCE_WH[0] / OFFICIAL_HW[1] for s in OFFICIAL_SCALE)
    c.data.augment.scale_of = "output"


def _smoke(c: ml_collections.ConfigDict) -> None:
    c.data.synthetic.update(num_train=8, num_valid=4, num_test=9, image_wh=(164, 59))
    c.data.crop_top = 24  # the official 240 rows at 1/10 scale
    c.data.image_hw = (16, 80)
    c.data.augment.scale_range = (1.0, 1.1)
    c.data.augment.scale_of = "output"
    c.checkpoint_every_steps = 3  # the last step only: each save costs seconds on a CPU
