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
    d = ml_collections.ConfigDict()
    d.name = "culane"
    d.data_dir = config_dict.placeholder(str)  # root with driver_*/, laneseg_label_w16/, list/
    # (old_prefix, new_prefix): list paths starting with old_prefix get new_prefix instead
    # (relative to data_dir, usually ''), for lists with absolute paths from another machine.
    d.root_rewrite = config_dict.placeholder(tuple)
    # train | valid | test | test0_normal .. test8_night (the nine test categories)
    d.train_split = "train"
    d.eval_split = "valid"
    d.crop_top = CROP_TOP  # official: rows 0..239 dropped (VERTICAL_CROP_SIZE)
    d.image_hw = OFFICIAL_HW
    d.class_weights = (0.4, 1.0, 1.0, 1.0, 1.0)
    d.mean_rgb = (123.68, 116.779, 103.939)  # the official BGR mean, in RGB order; std 1
    d.std_rgb = (1.0, 1.0, 1.0)
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
    d.shuffle = True
    d.skip_corrupt = False  # True: skip (train) / mask (eval) unreadable samples, counted in logs
    d.source = "files"  # files | tfds (a copy prepared by data_pipelines/tfds_builders.py)
    d.tfds_data_dir = config_dict.placeholder(str)  # source=tfds: TFDS data_dir; None = default
    d.tfds_name = config_dict.placeholder(str)  # source=tfds: None = culane
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
            "num_test": 18,
            "seed": 0,
            "image_wh": SOURCE_WH,
        }
    )
    return d


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_base_config()
    c.data = _data_config()
    # ERFNet-CULane-PyTorch train_erfnet.sh: batch 12, 12 epochs of the 88,880 training frames.
    c.batch_size = 12
    c.teacher.num_train_steps = 88_880
    c.student.num_train_steps = 88_880

    if variant in (None, ""):
        return c
    if variant == "synthetic":
        # Sized like the LLAMAS demo (teacher + student + distill + evaluation on 2 CPU cores).
        c.data.data_dir = "data/synthetic/culane"
        c.data.synthetic.update(enabled=True, num_train=160, num_valid=32, num_test=18)
        # The 1640x350 crop keeps CULane's aspect 4.69 at about the LLAMAS demo's pixel count.
        c.data.image_hw = (72, 336)
        # The official scale range relative to the network input (976 / 1640 = 0.595), so the
        # jitter is the official one at this smaller input.
        c.data.augment.scale_range = tuple(
            s * SOURCE_WH[0] / OFFICIAL_HW[1] for s in OFFICIAL_SCALE
        )
        c.data.augment.scale_of = "output"
        c.batch_size = 4
        c.eval_batch_size = 8
        c.teacher.model_kwargs.update(depth=18, base_width=16, head_channels=64)
        c.teacher.num_train_steps = 500
        c.teacher.learning_rate = 0.02
        c.student.model_kwargs.update(channels=(16, 32, 64), stage2_dropout=0.1)
        c.student.num_train_steps = 500
        c.student.learning_rate = 0.2
        c.optim.clip_grad_norm = 10.0
        c.log_every_steps = 25
        c.checkpoint_every_steps = 100
        return c
    if variant == "smoke":
        c.data.data_dir = "data/synthetic/culane_smoke"
        c.data.synthetic.update(
            enabled=True, num_train=8, num_valid=4, num_test=9, image_wh=(164, 59)
        )
        c.data.crop_top = 24  # the official 240 rows at 1/10 scale
        c.data.image_hw = (16, 80)
        c.data.augment.scale_range = (1.0, 1.1)
        c.data.augment.scale_of = "output"
        c.batch_size = 4
        c.eval_batch_size = 4
        c.teacher.model_kwargs.update(depth=18, base_width=4, head_channels=8, bins=(1, 2))
        c.teacher.num_train_steps = 3
        c.student.model_kwargs.update(
            channels=(4, 8, 16), num_stage1_blocks=1, num_stage2_repeats=1
        )
        c.student.num_train_steps = 3
        c.log_every_steps = 1
        c.checkpoint_every_steps = 3  # the last step only: each save costs seconds on a CPU
        return c
    raise ValueError(
        f"unknown variant {variant!r} of configs/culane.py; expected one of: "
        "'' (real data), 'synthetic', 'smoke'"
    )
