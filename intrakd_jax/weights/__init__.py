"""Importing PyTorch checkpoints: the released IntRA-KD models and the ImageNet initialisations.

``import_torch_checkpoint(path, arch)`` gives a project model and its variables whose outputs equal
the PyTorch model's (tests/test_weights_parity.py proves it per arch against independent PyTorch
modules); ``load_into`` places a checkpoint into an existing model's variables (fine-tuning:
``config.<teacher|student>.init_from``); ``python -m intrakd_jax.weights.convert`` writes an orbax
checkpoint of the project's own format. See ``archs.py`` for the checkpoint families.
"""

from intrakd_jax.weights.archs import ARCHS, Arch, get_arch
from intrakd_jax.weights.importer import (
    CHANNEL_ORDERS,
    ImportReport,
    arch_model,
    checkpoint_num_classes,
    import_checkpoint,
    import_torch_checkpoint,
    load_into,
)
from intrakd_jax.weights.readers import (
    TorchCheckpoint,
    WeightsError,
    checkpoint_stem,
    is_torch_checkpoint,
    read_checkpoint,
)

__all__ = [
    "ARCHS",
    "CHANNEL_ORDERS",
    "Arch",
    "ImportReport",
    "TorchCheckpoint",
    "WeightsError",
    "arch_model",
    "checkpoint_num_classes",
    "checkpoint_stem",
    "get_arch",
    "import_checkpoint",
    "import_torch_checkpoint",
    "is_torch_checkpoint",
    "load_into",
    "read_checkpoint",
]
