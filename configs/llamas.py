"""LLAMAS (Bosch unsupervised labeled lane markers) multi-class lane-marker segmentation.

Usage:
  python main.py --config=configs/llamas.py --config.data.data_dir=/data/llamas --workdir=runs/l
  python main.py --config=configs/llamas.py:synthetic --workdir=runs/demo  # demo, <15 min on CPU
  python main.py --config=configs/llamas.py:smoke --workdir=/tmp/smoke     # seconds; for tests

Variants (the text after ':'):
  (none)     the real dataset at the official resolution (1276x717, resized to 1280x720 so the
             1/8 feature maps tile exactly); needs config.data.data_dir.
  synthetic  writes a synthetic LLAMAS twin (exact on-disk format) under data/synthetic/llamas
             if absent, and runs teacher -> baseline student -> distilled student -> comparison
             on a 2-core CPU.
  smoke      a tiny version of the synthetic run for tests.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

CLASS_NAMES = ("background", "l1", "l0", "r0", "r1")


def _data_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "llamas"
    d.data_dir = config_dict.placeholder(str)  # LLAMAS root with color_images/ and labels/
    d.cache_dir = config_dict.placeholder(str)  # rendered labels; None = <data_dir>/.label_cache
    d.label_type = "multiclass"  # multiclass (5 classes) | binary (2)
    d.train_split = "train"
    d.eval_split = "valid"
    d.crop_top = 0  # rows dropped from the top before resizing
    d.image_hw = (720, 1280)
    d.class_weights = (1.0, 1.0, 1.0, 1.0, 1.0)
    d.mean_rgb = (123.68, 116.779, 103.939)  # the official BGR mean, in RGB order; std 1
    d.std_rgb = (1.0, 1.0, 1.0)
    d.augment = ml_collections.ConfigDict(
        {
            "enabled": True,
            "scale_range": (0.9, 1.1),
            "rotation_deg": 2.0,
            "hflip": False,  # if True, left/right lane classes are swapped with the image
            "brightness": 0.0,
        }
    )
    d.shuffle = True
    d.skip_corrupt = False  # True: skip (train) / mask (eval) unreadable samples, counted in logs
    d.source = "files"  # files | tfds (a copy prepared by data_pipelines/tfds_builders.py)
    d.tfds_data_dir = config_dict.placeholder(str)  # source=tfds: TFDS data_dir; None = default
    d.tfds_name = config_dict.placeholder(str)  # source=tfds: None = llamas/<label_type>
    d.num_parallel_calls = -1  # tf.data.AUTOTUNE
    d.prefetch = 2
    d.max_examples = ml_collections.ConfigDict(
        {
            "train": config_dict.placeholder(int),
            "valid": config_dict.placeholder(int),
            "test": config_dict.placeholder(int),
        }
    )
    d.synthetic = ml_collections.ConfigDict(
        {
            "enabled": False,
            "num_train": 64,
            "num_valid": 16,
            "num_test": 8,
            "seed": 0,
            "image_wh": (1276, 717),
        }
    )
    return d


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_base_config()
    c.data = _data_config()
    c.teacher.num_train_steps = 60_000
    c.student.num_train_steps = 60_000

    if variant in (None, ""):
        return c
    if variant == "synthetic":
        # Sized so teacher + student + distill + evaluation finish within 15 minutes on 2 CPU cores.
        c.data.data_dir = "data/synthetic/llamas"
        c.data.synthetic.update(enabled=True, num_train=160, num_valid=32, num_test=8)
        c.data.crop_top = 260
        c.data.image_hw = (96, 288)
        c.data.class_weights = (0.4, 1.0, 1.0, 1.0, 1.0)
        c.batch_size = 4
        c.eval_batch_size = 8
        c.teacher.model_kwargs.update(depth=18, base_width=16, head_channels=64)
        c.teacher.num_train_steps = 500
        c.teacher.learning_rate = 0.02
        # A from-scratch ERFNet needs a higher rate than the official 0.01 (which starts from
        # pretrained weights) to learn thin markings in 500 steps; narrower than (16, 32, 64) it
        # does not learn them at all in this budget.
        c.student.model_kwargs.update(channels=(16, 32, 64), stage2_dropout=0.1)
        c.student.num_train_steps = 500
        c.student.learning_rate = 0.2
        c.optim.clip_grad_norm = 10.0
        c.log_every_steps = 25
        c.checkpoint_every_steps = 100
        return c
    if variant == "smoke":
        c.data.data_dir = "data/synthetic/llamas_smoke"
        c.data.synthetic.update(
            enabled=True, num_train=8, num_valid=4, num_test=2, image_wh=(160, 90)
        )
        c.data.image_hw = (32, 64)
        c.batch_size = 4
        c.eval_batch_size = 4
        c.teacher.model_kwargs.update(depth=18, base_width=4, head_channels=8, bins=(1, 2))
        c.teacher.num_train_steps = 3
        c.student.model_kwargs.update(
            channels=(4, 8, 16), num_stage1_blocks=1, num_stage2_repeats=1
        )
        c.student.num_train_steps = 3
        c.log_every_steps = 1
        c.checkpoint_every_steps = 1
        return c
    raise ValueError(
        f"unknown variant {variant!r} of configs/llamas.py; expected one of: "
        "'' (real data), 'synthetic', 'smoke'"
    )
