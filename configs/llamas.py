"""LLAMAS (Bosch unsupervised labeled lane markers) multi-class lane-marker segmentation.

Usage:
  python main.py --config=configs/llamas.py --config.data.data_dir=/data/llamas --workdir=runs/l
  python main.py --config=configs/llamas.py:synthetic --workdir=runs/demo  # demo, ~6 min on 2 cores
  python main.py --config=configs/llamas.py:smoke --workdir=/tmp/smoke     # seconds; for tests

Variants (the text after ':'):
  (none)     the real dataset at the official resolution (1276x717, resized to 1280x720 so the
             1/8 feature maps tile exactly); needs config.data.data_dir.
  synthetic  writes a synthetic LLAMAS twin (exact on-disk format) under data/synthetic/llamas
             if absent, and runs teacher -> baseline student -> distilled student -> comparison
             on a 2-core CPU.
  smoke      a tiny version of the synthetic run for tests.

Pretrained starts as in the recipe (ImageNet files, README "Pretrained and released weights"):
  --config.teacher.init_from="('torchvision_resnet101', 'resnet101-5d3b4d8f.pth')"
  --config.student.init_from="('erfnet_imagenet_encoder', 'erfnet_encoder_pretrained.pth.tar')"
"""

import ml_collections
from ml_collections import config_dict

from configs import default

CLASS_NAMES = ("background", "l1", "l0", "r0", "r1")


def _data_config() -> ml_collections.ConfigDict:
    d = default.base_data_config("llamas")  # data_dir: the root with color_images/ and labels/
    d.cache_dir = config_dict.placeholder(str)  # rendered labels; None = <data_dir>/.label_cache
    d.label_type = "multiclass"  # multiclass (5 classes) | binary (2)
    d.crop_top = 0  # rows dropped from the top before resizing
    d.image_hw = (720, 1280)
    # None: 1.0 for each class of the label type (5 multiclass, 2 binary).
    d.class_weights = config_dict.placeholder(tuple)
    d.augment = ml_collections.ConfigDict(
        {
            "enabled": True,
            "scale_range": (0.9, 1.1),
            "rotation_deg": 2.0,
            "hflip": False,  # if True, left/right lane classes are swapped with the image
            "brightness": 0.0,
        }
    )
    d.synthetic = default.synthetic_config(
        num_train=64, num_valid=16, num_test=8, image_wh=(1276, 717)
    )
    return d


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = default.dataset_config(_data_config(), num_train_steps=60_000)
    return default.apply_variant(c, variant, _synthetic, _smoke)


def _synthetic(c: ml_collections.ConfigDict) -> None:
    c.data.synthetic.update(num_train=160, num_valid=32, num_test=8)
    c.data.crop_top = 260
    c.data.image_hw = (96, 288)
    c.data.class_weights = (0.4, 1.0, 1.0, 1.0, 1.0)


def _smoke(c: ml_collections.ConfigDict) -> None:
    c.data.synthetic.update(num_train=8, num_valid=4, num_test=2, image_wh=(160, 90))
    c.data.image_hw = (32, 64)
