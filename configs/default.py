"""Settings shared by every dataset config: stages, models, optimisation, distillation, logging.

Dataset configs (configs/llamas.py, ...) start from ``get_base_config()`` and fill ``config.data``.
Every field can be overridden on the command line, e.g. ``--config.distill.intra_kd.weight=100``.
"""

from collections.abc import Callable

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
            # auto: onednn where its pip packages are installed, else fast | fast: CPU-tuned XLA
            # conv gradients (CPU only) | xla | onednn: oneDNN convolutions through the XLA FFI
            # on CPU (float32; built on first use, else one warning and fast; the fastest CPU
            # step, BENCHMARKS.md). GPU/TPU run XLA's in every mode.
            "conv_impl": "auto",
            # (10, 20, 30, 60) with align_corners: the released IntRA-KD teacher's pyramid
            # (replaces the bins) and PyTorch-0.3 bilinear resizes (configs/apolloscape.py).
            "scale_series": (),
            "align_corners": False,
        }
    )
    c.teacher.num_train_steps = 10_000
    c.teacher.learning_rate = 0.005
    c.teacher.head_lr_mult = 10.0  # PSPNet head (everything outside the backbone) learns 10x faster
    # Checkpoint for the distill stage: a stage dir, a manager dir or a step dir. None = the
    # teacher stage of this workdir (<workdir>/teacher).
    c.teacher.checkpoint = config_dict.placeholder(str)
    # A PyTorch/safetensors teacher.checkpoint (e.g. the released pspnet_46_6.pth.tar) needs its
    # arch (intrakd_pspnet, intrakd_erfnet; see intrakd_jax/weights/archs.py); the teacher is
    # then that arch's model and config.teacher.model/model_kwargs are not used.
    c.teacher.checkpoint_arch = config_dict.placeholder(str)
    # Pretrained start: (arch, path) of a PyTorch/safetensors file whose arrays overwrite the
    # fresh initialisation; the rest (e.g. a head for another class count) stays random and the
    # stage logs what was imported. The official recipe starts the teacher from ImageNet:
    # ("torchvision_resnet101", "resnet101-5d3b4d8f.pth") from download.pytorch.org/models.
    c.teacher.init_from = config_dict.placeholder(tuple)

    # The student: erfnet (the official recipe), enet, resnet18 or resnet34. model_kwargs has one
    # section of arguments per student; the section of config.student.model is used, e.g.
    # --config.student.model=resnet18 --config.student.model_kwargs.resnet18.base_width=32.
    c.student = ml_collections.ConfigDict()
    c.student.model = "erfnet"
    c.student.model_kwargs = ml_collections.ConfigDict(
        {
            "erfnet": {
                "channels": (16, 64, 128),
                "num_stage1_blocks": 5,
                "num_stage2_repeats": 2,
                "stage1_dropout": 0.03,
                "stage2_dropout": 0.3,
                "conv_impl": "auto",
                "remat": False,  # recompute block activations in the backward pass (less memory)
                # True for weights trained on BGR images (init_from intrakd_erfnet).
                "reverse_input_channels": False,
            },
            # ENet (Paszke et al. 2016) with ENet-SAD's fourth encoder stage.
            "enet": {
                "channels": (16, 64, 128),
                "stage1_dropout": 0.01,
                "dropout": 0.1,
                "conv_impl": "auto",
            },
            # Dilated ResNets (output stride 8) with a light head (models/resnet_student.py).
            "resnet18": {
                "base_width": 64,
                "head_channels": 128,
                "dropout_rate": 0.1,
                "conv_impl": "auto",
            },
            "resnet34": {
                "base_width": 64,
                "head_channels": 128,
                "dropout_rate": 0.1,
                "conv_impl": "auto",
            },
        }
    )
    c.student.num_train_steps = 10_000
    c.student.learning_rate = 0.01  # official; assumes a pretrained start (init_from)
    c.student.head_lr_mult = 1.0
    # Pretrained start, as for the teacher: ("erfnet_imagenet_encoder",
    # "erfnet_encoder_pretrained.pth.tar") of Eromera/erfnet_pytorch (trained_models/) for ERFNet;
    # ("torchvision_resnet18", "resnet18-5c106cde.pth") for the ResNet-18 student.
    c.student.init_from = config_dict.placeholder(tuple)

    # Shared optimiser settings: SGD with momentum, weight decay, poly LR (power 0.9).
    c.optim = ml_collections.ConfigDict()
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.poly_power = 0.9
    c.optim.clip_grad_norm = 0.0  # 0 = off (official); e.g. 10 tames early IntRA-KD spikes
    # A NaN/inf loss or gradient: 0 = stop the stage (the last good checkpoint is kept, the
    # report <stage>/nonfinite.json names the step and term); N = skip up to N such updates.
    c.optim.skip_nonfinite_steps = 0

    # Distillation (the distill stage): CE + sum of weight * term over the enabled terms
    # (intrakd_jax/losses/terms.py; METHOD.md sections 2 and 4). terms: any of intra_kd, kd, at,
    # skd_pixel, skd_pair, sad, cwd, as a tuple or a comma string, e.g.
    # --config.distill.terms=intra_kd,kd
    # taps: (student tap, teacher tap, weight) triples; a tap is a model's tap name or a level,
    # "high" (1/8: ERFNet encoder, PSPNet psp) or "mid" (1/4: ERFNet stage1, PSPNet layer1), e.g.
    # --config.distill.intra_kd.taps="(('high','high',1.0),('mid','mid',1.0))" for 1/8 + 1/4.
    c.distill = ml_collections.ConfigDict()
    c.distill.terms = ("intra_kd",)
    # IntRA-KD (METHOD.md section 2): lambda 10 and alpha (1, 1, 1) from the paper; kernel 5 from
    # its supplementary; soft-mass normaliser and sqrt(var + eps)^3 skewness are the project's
    # reading (area, kernel 11 = the author's later sketch, METHOD.md 4a).
    c.distill.intra_kd = ml_collections.ConfigDict(
        {
            "weight": 10.0,
            "taps": (("high", "high", 1.0),),
            "kernel_size": 5,
            "moment_weights": (1.0, 1.0, 1.0),  # mean, variance, skewness graphs
            "normalizer": "soft_mass",  # soft_mass | count | area
            "skew_denominator": "std_cubed",  # std_cubed | var
            # Guards (0 = off, the paper): classes below this soft mass (pixels at the tap) count
            # as absent; relative variance floor inside the skewness (see losses/intra_kd.py).
            "min_mass": 0.0,
            "skew_floor": 0.0,
        }
    )
    # Hinton KD on the logits, over labelled pixels. No release fixes T and the weight for
    # segmentation: the project's choice, T = 1 (CIRKD's segmentation KD loss default,
    # winycg/CIRKD losses/kd.py) and weight 1 (with the T^2 factor, gradients on the CE's scale).
    c.distill.kd = ml_collections.ConfigDict({"weight": 1.0, "temperature": 1.0})
    # Attention transfer: p = 2 and beta = 1000 times the per-map mean squared difference of the
    # normalised maps (szagoruyko/attention-transfer, cifar.py and README).
    c.distill.at = ml_collections.ConfigDict(
        {"weight": 1000.0, "taps": (("high", "high", 1.0),), "p": 2.0}
    )
    # SKD (irfanICMLL/structure_knowledge_distillation): pixel-wise weight 10; pair-wise weight 1
    # (0.5 in one of their scripts) on the 1/8 context features, 0.5 -> 2 x 2 max-pooled nodes,
    # node norms detached as in their criterion. The holistic (GAN) term is not implemented.
    c.distill.skd_pixel = ml_collections.ConfigDict({"weight": 10.0})
    c.distill.skd_pair = ml_collections.ConfigDict(
        {
            "weight": 1.0,
            "taps": (("high", "high", 1.0),),
            "node_fraction": 0.5,
            "detach_norm": True,
        }
    )
    # SAD (Hou et al., ICCV 2019): no teacher; the student's sad_taps, weight 0.1 per block pair,
    # switched on after a warm-up (the second half of training here).
    c.distill.sad = ml_collections.ConfigDict({"weight": 0.1, "start_fraction": 0.5})
    # CWD (Shu et al., ICCV 2021) on the logits: tau 1 and weight 5, the authors' Cityscapes
    # logits config (pppppM/mmsegmentation-distiller, also mmrazor's; ADE20K: weight 10).
    c.distill.cwd = ml_collections.ConfigDict({"weight": 5.0, "temperature": 1.0})

    # Evaluation (mode=evaluate, and the end of every stage).
    c.eval = ml_collections.ConfigDict()
    c.eval.split = config_dict.placeholder(str)  # None = config.data.eval_split
    c.eval.max_batches = config_dict.placeholder(int)  # None = the whole split
    # The batch evaluation job (mode=evaluate; see intrakd_jax/batch_eval.py).
    c.eval.write_predictions = True  # official submission files (probability PNGs, .lines.txt, ids)
    c.eval.num_overlays = 16  # overlay images written per checkpoint; -1 = every image
    c.eval.tta = "none"  # none | official (ApolloScape multi-scale + corner crops)
    # Official crop width at the official scale; None = the model's (PSPNet 1410, others 1440).
    c.eval.tta_test_size = config_dict.placeholder(int)
    c.eval.exist_min_fraction = 0.0005  # a lane slot exists when this share of pixels predicts it
    c.eval.include_void = True  # ApolloScape official mIoU averages void too (public script)
    c.eval.workers = config_dict.placeholder(int)  # lane-metric processes; None = all cores
    # mode=evaluate: what to evaluate: a stage dir, its best/ or checkpoints/, or a step folder;
    # several separated by commas.
    c.checkpoint = config_dict.placeholder(str)
    # The arch of PyTorch/safetensors files in config.checkpoint (e.g. pspnet_46_6.pth.tar:
    # intrakd_pspnet; erfnet_trained.pth.tar: intrakd_erfnet).
    c.checkpoint_arch = config_dict.placeholder(str)

    # mode=predict: run config.checkpoint on your own images or video (intrakd_jax/predict.py).
    c.predict = ml_collections.ConfigDict()
    # A folder (searched recursively), a glob ("frames/*.jpg"), a list file (one path per line,
    # relative to the list's folder) or a video file (.mp4, .avi, .mov, .mkv, ...).
    c.predict.input = config_dict.placeholder(str)
    c.predict.output = config_dict.placeholder(str)  # None = <workdir>/predict
    c.predict.batch_size = config_dict.placeholder(int)  # None = config.eval_batch_size
    c.predict.overlays = True  # the prediction coloured over each frame (or an annotated video)
    c.predict.official = True  # .lines.txt (CULane, LLAMAS) / full-size id PNGs (ApolloScape)
    c.predict.probabilities = False  # also one 8-bit probability PNG per class and image
    c.predict.max_frames = config_dict.placeholder(int)  # video: stop after this many frames

    # mode=export: deployable artifacts of config.checkpoint (intrakd_jax/export.py).
    c.export = ml_collections.ConfigDict()
    c.export.formats = "jax,savedmodel,tflite"  # any of jax, savedmodel, tflite
    c.export.output = config_dict.placeholder(str)  # None = <workdir>/export
    # TFLite with this fixed batch size (BatchNorm folds: 1.4x faster); None = any batch size.
    c.export.tflite_batch = config_dict.placeholder(int)

    # mode=explain: what IntRA-KD matches, for config.checkpoint (the student) and the teacher
    # of config.teacher (intrakd_jax/explain.py).
    c.explain = ml_collections.ConfigDict()
    c.explain.num_images = 2  # validation images drawn, the first of config.eval.split
    c.explain.output = config_dict.placeholder(str)  # None = <workdir>/explain

    return c


def dataset_config(
    data: ml_collections.ConfigDict, num_train_steps: int
) -> ml_collections.ConfigDict:
    """The base config with ``config.data`` and the recipe's steps for teacher and student."""
    c = get_base_config()
    c.data = data
    c.teacher.num_train_steps = num_train_steps
    c.student.num_train_steps = num_train_steps
    return c


def base_data_config(name: str) -> ml_collections.ConfigDict:
    """The ``config.data`` fields every dataset has, with their shared defaults.

    Dataset configs add the rest (crop, input size, class weights, augmentation, synthetic twin).
    """
    d = ml_collections.ConfigDict()
    d.name = name
    d.data_dir = config_dict.placeholder(str)  # the dataset root (see the dataset config)
    d.train_split = "train"
    d.eval_split = "valid"
    d.mean_rgb = (123.68, 116.779, 103.939)  # the official BGR mean, in RGB order; std 1
    d.std_rgb = (1.0, 1.0, 1.0)
    d.shuffle = True
    d.skip_corrupt = False  # True: skip (train) / mask (eval) unreadable samples, counted in logs
    d.source = "files"  # files | tfds (a copy prepared by data_pipelines/tfds_builders.py)
    d.tfds_data_dir = config_dict.placeholder(str)  # source=tfds: TFDS data_dir; None = default
    # source=tfds: the TFDS name/config; None = the one the data config implies (e.g. culane,
    # llamas/<label_type>).
    d.tfds_name = config_dict.placeholder(str)
    d.num_parallel_calls = -1  # tf.data.AUTOTUNE
    d.prefetch = 2
    d.max_examples = ml_collections.ConfigDict(
        {
            "train": config_dict.placeholder(int),
            "valid": config_dict.placeholder(int),
            "test": config_dict.placeholder(int),
        }
    )
    return d


def synthetic_config(**generator_args) -> ml_collections.ConfigDict:
    """``config.data.synthetic``: off, seed 0, and the dataset generator's other arguments.

    Its fields are the keyword arguments of the generator (``num_train``, ``num_valid``,
    ``num_test``, ``seed``, and e.g. ``image_wh``); ``enabled`` makes the reader generate the
    data into ``config.data.data_dir`` on first use.
    """
    return ml_collections.ConfigDict({"enabled": False, "seed": 0, **generator_args})


def apply_variant(
    c: ml_collections.ConfigDict,
    variant: str | None,
    synthetic: Callable[[ml_collections.ConfigDict], None],
    smoke: Callable[[ml_collections.ConfigDict], None],
) -> ml_collections.ConfigDict:
    """Turns a dataset's real-data config into the variant named after ':' in ``--config``.

    ``'synthetic'`` and ``'smoke'`` generate the dataset's synthetic twin into
    ``data/synthetic/<name>`` (``<name>_smoke``) and set the model, optimisation and logging
    sizes shared by all datasets; then the dataset's ``synthetic``/``smoke`` function sets its
    own fields (data sizes, and any shared value it overrides).

    Args:
        c: the real-data config (variant ``''``), modified in place.
        variant: ``None``/``''``, ``'synthetic'`` or ``'smoke'``.
        synthetic: the dataset's part of the synthetic demo.
        smoke: the dataset's part of the smoke variant.

    Returns:
        ``c``.

    Raises:
        ValueError: an unknown variant (the message lists the known ones).
    """
    if variant in (None, ""):
        return c
    if variant not in ("synthetic", "smoke"):
        raise ValueError(
            f"unknown variant {variant!r} of configs/{c.data.name}.py; expected one of: "
            "'' (real data), 'synthetic', 'smoke'"
        )
    c.data.synthetic.enabled = True
    if variant == "synthetic":
        c.data.data_dir = f"data/synthetic/{c.data.name}"
        _synthetic_demo_sizes(c)
        synthetic(c)
    else:
        c.data.data_dir = f"data/synthetic/{c.data.name}_smoke"
        _smoke_sizes(c)
        smoke(c)
    return c


def _synthetic_demo_sizes(c: ml_collections.ConfigDict) -> None:
    # Teacher + baseline student + distilled student + evaluation in about 6 minutes on a 2-core
    # CPU for each dataset (BENCHMARKS.md); the budget is 15.
    c.batch_size = 4
    c.eval_batch_size = 8
    c.teacher.model_kwargs.update(depth=18, base_width=16, head_channels=64)
    c.teacher.num_train_steps = 500
    c.teacher.learning_rate = 0.02
    # A from-scratch ERFNet needs a higher rate than the official 0.01 (which starts from
    # pretrained weights) to learn thin markings in 500 steps; narrower than (16, 32, 64) it
    # does not learn them at all in this budget.
    c.student.model_kwargs.erfnet.update(channels=(16, 32, 64), stage2_dropout=0.1)
    c.student.num_train_steps = 500
    c.student.learning_rate = 0.2
    c.optim.clip_grad_norm = 10.0
    c.log_every_steps = 25
    c.checkpoint_every_steps = 100


def _smoke_sizes(c: ml_collections.ConfigDict) -> None:
    # Tiny models and 3 steps a stage: the whole pipeline in seconds, for tests.
    c.batch_size = 4
    c.eval_batch_size = 4
    c.teacher.model_kwargs.update(depth=18, base_width=4, head_channels=8, bins=(1, 2))
    c.teacher.num_train_steps = 3
    c.student.model_kwargs.erfnet.update(
        channels=(4, 8, 16), num_stage1_blocks=1, num_stage2_repeats=1
    )
    c.student.num_train_steps = 3
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1
