"""Settings shared by every dataset config: stages, models, optimisation, distillation, logging.

Dataset configs (configs/llamas.py, ...) start from ``get_base_config()`` and fill ``config.data``.
Every field can be overridden on the command line, e.g. ``--config.distill.weight=100``.
"""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # What to run: teacher | student | distill | evaluate | pipeline (teacher -> baseline student ->
    # distilled student -> comparison table). Stages write to <workdir>/<stage>/.
    # check_data: list every missing/unreadable file, bad label and list line; exit 1 if any.
    c.mode = "pipeline"
    c.seed = 0
    c.batch_size = 8  # global, over all devices and hosts (official recipe: 8)
    c.eval_batch_size = 8  # global; the last partial batch is padded and masked
    c.num_devices = config_dict.placeholder(int)  # None = all visible devices
    c.dtype = (
        "float32"  # model compute dtype: float32 | bfloat16 (losses and BN stats stay float32)
    )

    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = only at the end of a stage
    c.checkpoint_every_steps = 500
    c.max_checkpoints_to_keep = 2

    # The frozen teacher (PSPNet on a dilated ResNet-101 in the official recipe).
    c.teacher = ml_collections.ConfigDict()
    c.teacher.model = "pspnet"
    # All arguments are listed so that each can be overridden on the command line.
    c.teacher.model_kwargs = ml_collections.ConfigDict(
        {
            "depth": 101,
            "base_width": 64,
            "deep_stem": False,
            "bins": (1, 2, 3, 6),
            "head_channels": 512,
            "dropout_rate": 0.1,
        }
    )
    c.teacher.num_train_steps = 10_000
    c.teacher.learning_rate = 0.005
    c.teacher.head_lr_mult = 10.0  # PSPNet head (everything outside the backbone) learns 10x faster
    # Checkpoint for the distill stage: a stage dir, a manager dir or a step dir. None = the
    # teacher stage of this workdir (<workdir>/teacher).
    c.teacher.checkpoint = config_dict.placeholder(str)

    # The student (ERFNet in the official recipe).
    c.student = ml_collections.ConfigDict()
    c.student.model = "erfnet"
    c.student.model_kwargs = ml_collections.ConfigDict(
        {
            "channels": (16, 64, 128),
            "num_stage1_blocks": 5,
            "num_stage2_repeats": 2,
            "stage1_dropout": 0.03,
            "stage2_dropout": 0.3,
        }
    )
    c.student.num_train_steps = 10_000
    c.student.learning_rate = 0.01
    c.student.head_lr_mult = 1.0

    # Shared optimiser settings: SGD with momentum, weight decay, poly LR (power 0.9).
    c.optim = ml_collections.ConfigDict()
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.poly_power = 0.9
    c.optim.clip_grad_norm = 0.0  # 0 = off (official); e.g. 10 tames early IntRA-KD spikes

    # IntRA-KD (METHOD.md section 2). taps: (student tap, teacher tap, weight) pairs; add
    # ("stage1", "layer1", 1.0) for the multi-level (1/8 + 1/4) option.
    c.distill = ml_collections.ConfigDict()
    c.distill.weight = 10.0  # lambda
    c.distill.taps = (("encoder", "psp", 1.0),)
    c.distill.kernel_size = 5
    c.distill.moment_weights = (1.0, 1.0, 1.0)
    c.distill.normalizer = "soft_mass"  # soft_mass | count | area
    c.distill.skew_denominator = "std_cubed"  # std_cubed | var
    c.distill.logit_kd_weight = 0.0  # optional Hinton KD term (baseline), off by default
    c.distill.logit_kd_temperature = 1.0

    # Evaluation (mode=evaluate, and the end of every stage).
    c.eval = ml_collections.ConfigDict()
    c.eval.split = config_dict.placeholder(str)  # None = config.data.eval_split
    c.eval.max_batches = config_dict.placeholder(int)  # None = the whole split
    # The batch evaluation job (mode=evaluate; see intrakd_jax/batch_eval.py).
    c.eval.write_predictions = True  # official submission files (probability PNGs, .lines.txt, ids)
    c.eval.num_overlays = 16  # overlay images written per checkpoint; -1 = every image
    c.eval.tta = "none"  # none | official (ApolloScape multi-scale + corner crops)
    c.eval.tta_test_size = (
        1440  # official crop width at the official scale (ERFNet 1440, PSPNet 1410)
    )
    c.eval.exist_min_fraction = 0.0005  # a lane slot exists when this share of pixels predicts it
    c.eval.include_void = True  # ApolloScape official mIoU averages void too (public script)
    c.eval.workers = config_dict.placeholder(int)  # CULane evaluator processes; None = all cores
    # mode=evaluate: what to evaluate: a stage dir, its best/ or checkpoints/, or a step folder;
    # several separated by commas.
    c.checkpoint = config_dict.placeholder(str)

    return c
