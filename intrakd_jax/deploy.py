"""Running an exported model without the training code: ``predictor = deploy.load(export_dir)``.

``python main.py ... --config.mode=export`` (``intrakd_jax.export``) writes a ``jax.export``
artifact, ``model.jax_export``, with ``metadata.json`` beside it. This module loads and runs that
artifact with nothing but the standard library, numpy and jax: no Flax, no model code, no
TensorFlow, so it can be copied alone next to the two files into a serving process::

    from intrakd_jax import deploy

    predictor = deploy.load("runs/demo/export")  # the folder, or the .jax_export file in it
    probs = predictor(images)  # float32 (B, H, W, 3) RGB 0..255 -> float32 (B, H, W, K)
    labels = probs.argmax(-1)  # class ids; names in predictor.class_names

The input convention (format version 1), also stated in ``metadata.json``: RGB images as float32
(any real dtype is converted) with values 0..255, shape ``(B, H, W, 3)`` at the network size
``predictor.input_hw``, i.e. the source frame with its top ``crop_top`` rows removed and then
bilinearly resized (half-pixel centres, as ``tf.image.resize`` or ``cv2.INTER_LINEAR``) to
``(H, W)``. The mean/std normalisation of training happens inside the artifact. The output is
the softmax class probabilities, float32 ``(B, H, W, K)``. The batch size ``B`` is free.

The file names, the format version and the metadata layout are defined here, once, and
``intrakd_jax.export`` writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "JAX_FILE",
    "METADATA_FILE",
    "ArtifactError",
    "InputShapeError",
    "Predictor",
    "check_metadata",
    "load",
    "read_metadata",
]

FORMAT = "intrakd_jax.export"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

# File names inside an export folder (intrakd_jax.export writes them).
METADATA_FILE = "metadata.json"
JAX_FILE = "model.jax_export"
SAVEDMODEL_DIR = "savedmodel"
TFLITE_FILE = "model.tflite"
SUMMARY_FILE = "export.json"

# XLA:CPU compiler options for the artifact on CPU. jaxlib 0.10 hands convolutions to YNNPACK
# fusions by default, which kept about one of the two cores of the development CPU busy; XLA's
# own convolution emitter keeps both busy and runs ERFNet at CULane size 1.35-1.7x faster
# (BENCHMARKS.md, "Inference and exported artifacts"). So the predictor compiles with no YNNPACK
# fusions; ``load(..., compiler_options={})`` keeps XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

CONVENTION = (
    "float32 RGB values 0..255, shape (batch, {h}, {w}, 3): the frame below its top "
    "{crop_top} rows, bilinearly resized to {h}x{w}"
)


class ArtifactError(ValueError):
    """An exported artifact or its metadata is missing, corrupt, or the two do not match."""


class InputShapeError(ValueError):
    """Images given to a predictor do not have the shape or dtype the artifact was exported for."""


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


def _field(meta: Mapping[str, Any], dotted: str, path: str) -> Any:
    """``meta["a"]["b"]`` for ``"a.b"``; ArtifactError naming the file and field when absent."""
    value: Any = meta
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ArtifactError(f"{path}: field {dotted!r} is missing")
        value = value[part]
    return value


def _int_pair(value: Any, dotted: str, path: str) -> tuple[int, int]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ArtifactError(f"{path}: field {dotted!r} is {value!r}; expected [height, width] > 0")
    return int(value[0]), int(value[1])


def _float_triple(value: Any, dotted: str, path: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ArtifactError(f"{path}: field {dotted!r} is {value!r}; expected 3 numbers (R, G, B)")
    return float(value[0]), float(value[1]), float(value[2])


def check_metadata(meta: Any, path: str = METADATA_FILE) -> dict:
    """Validates export metadata (format version 1) and returns it as a dict.

    Checks the fields a runtime needs: format name and version, input size, channel order,
    value range, normalisation, class names. Other fields (checkpoint, artifacts, versions) are
    informational.

    Args:
      meta: the parsed JSON.
      path: the file it came from, for messages.

    Raises:
      ArtifactError: a field is missing or malformed, or the format version is not supported;
        the message names the file and the field.
    """
    if not isinstance(meta, Mapping):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    fmt = _field(meta, "format", path)
    if fmt != FORMAT:
        raise ArtifactError(f"{path}: field 'format' is {fmt!r}; expected {FORMAT!r}")
    version = _field(meta, "format_version", path)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{path}: format_version {version!r} is not supported by this intrakd_jax.deploy "
            f"(it reads {list(SUPPORTED_FORMAT_VERSIONS)}); re-export the checkpoint with this "
            "version of intrakd_jax, or load it with the version that wrote it"
        )
    _int_pair(_field(meta, "input.hw", path), "input.hw", path)
    if _field(meta, "input.channels", path) != 3:
        raise ArtifactError(f"{path}: field 'input.channels' must be 3")
    order = _field(meta, "input.channel_order", path)
    if order != "RGB":
        raise ArtifactError(f"{path}: field 'input.channel_order' is {order!r}; expected 'RGB'")
    if _field(meta, "input.dtype", path) != "float32":
        raise ArtifactError(f"{path}: field 'input.dtype' must be 'float32'")
    value_range = _field(meta, "input.value_range", path)
    if not (
        isinstance(value_range, Sequence)
        and len(value_range) == 2
        and all(isinstance(v, int | float) for v in value_range)
    ):
        raise ArtifactError(
            f"{path}: field 'input.value_range' is {value_range!r}; expected [lo, hi]"
        )
    _float_triple(_field(meta, "input.mean_rgb", path), "input.mean_rgb", path)
    std = _float_triple(_field(meta, "input.std_rgb", path), "input.std_rgb", path)
    if not all(s > 0 for s in std):
        raise ArtifactError(f"{path}: field 'input.std_rgb' is {list(std)}; expected all > 0")
    crop_top = _field(meta, "input.crop_top", path)
    if not isinstance(crop_top, int) or isinstance(crop_top, bool) or crop_top < 0:
        raise ArtifactError(f"{path}: field 'input.crop_top' is {crop_top!r}; expected an int >= 0")
    source_hw = meta["input"].get("source_hw")
    if source_hw is not None:
        _int_pair(source_hw, "input.source_hw", path)
    names = _field(meta, "classes", path)
    if (
        not isinstance(names, Sequence)
        or isinstance(names, str)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise ArtifactError(f"{path}: field 'classes' must be a non-empty list of class names")
    num_classes = meta.get("num_classes", len(names))
    if num_classes != len(names):
        raise ArtifactError(
            f"{path}: field 'num_classes' is {num_classes!r} but 'classes' lists {len(names)} names"
        )
    return dict(meta)


def read_metadata(path: str) -> dict:
    """Reads and validates ``metadata.json`` (a file, or the export folder holding it).

    Raises:
      ArtifactError: the file is missing, not JSON, or fails ``check_metadata``.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(path):
        raise ArtifactError(
            f"{path}: no such file; an export folder written by --config.mode=export holds "
            f"{METADATA_FILE} beside {JAX_FILE}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    return check_metadata(meta, path)


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------


def _dims(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class Predictor:
    """A loaded ``jax.export`` artifact: ``predictor(images_bhwc) -> probabilities_bhwk``.

    Attributes:
      path: the artifact file.
      metadata: the validated ``metadata.json`` contents.
      input_hw: (H, W) the images must have.
      class_names: one name per output channel.
      num_classes: K, the last axis of the output.
      platforms: the platforms the artifact was lowered for (e.g. ``("cpu", "cuda", "tpu")``).
      exported: the ``jax.export.Exported`` object (e.g. to call inside your own ``jax.jit``).
    """

    def __init__(
        self,
        path: str,
        exported: jax_export.Exported,
        metadata: dict,
        compiler_options: Mapping[str, Any] | None = None,
    ):
        """Wraps a deserialized artifact; use ``load`` instead, which checks the two agree."""
        self.path = path
        self.exported = exported
        self.metadata = metadata
        self.input_hw = tuple(metadata["input"]["hw"])
        self.class_names = tuple(metadata["classes"])
        self.num_classes = len(self.class_names)
        self.platforms = tuple(exported.platforms)
        self.compiler_options = dict(compiler_options or {})
        # One compilation per batch size, cached by jit; the artifact's program is not traced
        # again, only its batch dimension refined.
        self._call = jax.jit(exported.call, compiler_options=self.compiler_options or None)

    @property
    def convention(self) -> str:
        """The input convention in words, as error messages state it."""
        h, w = self.input_hw
        return CONVENTION.format(h=h, w=w, crop_top=self.metadata["input"]["crop_top"])

    def check_images(self, images: Any) -> np.ndarray:
        """``images`` as a float32 (B, H, W, 3) array, or an InputShapeError saying why not."""
        h, w = self.input_hw
        expected = f"expected {self.convention}"
        arr = images if isinstance(images, np.ndarray | jax.Array) else np.asarray(images)
        dtype = np.dtype(arr.dtype)
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise InputShapeError(f"{self.path}: images have dtype {dtype}; {expected}")
        if arr.ndim != 4:
            hint = " (one image: images[None])" if arr.ndim == 3 else ""
            raise InputShapeError(
                f"{self.path}: images have shape {_dims(arr.shape)}, rank {arr.ndim}; "
                f"{expected}{hint}"
            )
        b, ih, iw, c = arr.shape
        if c != 3:
            raise InputShapeError(
                f"{self.path}: images have {c} channels (shape {_dims(arr.shape)}); {expected} "
                "(channels last, RGB)"
            )
        if (ih, iw) != (h, w):
            raise InputShapeError(
                f"{self.path}: images are {ih}x{iw} (shape {_dims(arr.shape)}); {expected}"
            )
        if b < 1:
            raise InputShapeError(f"{self.path}: empty batch; {expected}")
        if isinstance(arr, jax.Array):
            return arr.astype(np.float32)
        return np.asarray(arr, np.float32)

    def __call__(self, images: Any) -> np.ndarray:
        """Class probabilities float32 (B, H, W, K) of RGB images float32 (B, H, W, 3), 0..255.

        Raises:
          InputShapeError: the images' rank, size, channel count or dtype does not fit.
        """
        images = self.check_images(images)
        try:
            return np.asarray(self._call(images))
        except jax.errors.JaxRuntimeError as e:
            # A jaxlib without these (experimental) options: compile with XLA's defaults.
            if not self.compiler_options or not any(k in str(e) for k in self.compiler_options):
                raise
            self.compiler_options = {}
            self._call = jax.jit(self.exported.call)
            return np.asarray(self._call(images))

    def __repr__(self) -> str:
        h, w = self.input_hw
        return (
            f"Predictor({self.path!r}, model={self.metadata.get('model')!r}, input=(B, {h}, {w}, "
            f"3) RGB 0..255, classes={self.num_classes}, platforms={self.platforms})"
        )


def _check_artifact_file(path: str, record: Mapping[str, Any], meta_path: str) -> bytes:
    """The artifact's bytes, after the size and checksum the metadata records (when it does)."""
    with open(path, "rb") as f:
        blob = f.read()
    size = record.get("bytes")
    if isinstance(size, int) and size != len(blob):
        raise ArtifactError(
            f"{path}: {len(blob)} bytes, but {meta_path} records {size}: the file is truncated or "
            "was replaced; export the checkpoint again"
        )
    digest = record.get("sha256")
    if isinstance(digest, str) and hashlib.sha256(blob).hexdigest() != digest:
        raise ArtifactError(
            f"{path}: contents differ from the sha256 recorded in {meta_path}: the file is corrupt "
            "or belongs to another export; export the checkpoint again"
        )
    return blob


def _check_signature(exported: jax_export.Exported, meta: dict, path: str, meta_path: str) -> None:
    """The artifact's input and output shapes against the metadata (size, class count)."""
    h, w = meta["input"]["hw"]
    k = len(meta["classes"])
    if len(exported.in_avals) != 1 or len(exported.out_avals) != 1:
        raise ArtifactError(
            f"{path}: takes {len(exported.in_avals)} inputs and gives {len(exported.out_avals)} "
            "outputs; expected an image batch in and probabilities out"
        )
    (arg,), (out,) = exported.in_avals, exported.out_avals
    if (
        len(arg.shape) != 4
        or tuple(arg.shape[1:]) != (h, w, 3)
        or np.dtype(arg.dtype) != np.float32
        or not jax_export.is_symbolic_dim(arg.shape[0])
    ):
        raise ArtifactError(
            f"{path}: input is {arg.dtype}{_dims(arg.shape)}, but {meta_path} describes "
            f"float32(batch, {h}, {w}, 3) with a free batch size; the two files are from "
            "different exports"
        )
    if len(out.shape) != 4 or tuple(out.shape[1:]) != (h, w, k):
        raise ArtifactError(
            f"{path}: output is {_dims(out.shape)}, but {meta_path} lists {k} classes at "
            f"{h}x{w} (expected (batch, {h}, {w}, {k})); the two files are from different exports"
        )


def load(path: str, compiler_options: Mapping[str, Any] | None = None) -> Predictor:
    """Loads the ``jax.export`` artifact of an export folder for inference.

    Args:
      path: the export folder (holding ``model.jax_export`` and ``metadata.json``) or the
        ``.jax_export`` file itself (``metadata.json`` must be beside it).
      compiler_options: XLA options for compiling the artifact; None gives
        ``CPU_COMPILER_OPTIONS`` on CPU and XLA's defaults elsewhere, ``{}`` XLA's defaults.

    Returns:
      A ``Predictor``.

    Raises:
      ArtifactError: a file is missing, the artifact is truncated or corrupt, the metadata is
        malformed or of an unsupported format version, the artifact's shapes disagree with the
        metadata, or it was not lowered for this machine's platform.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    artifact = os.path.join(path, JAX_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(artifact):
        raise ArtifactError(
            f"{artifact}: no such file; expected the jax.export artifact ({JAX_FILE}) that "
            "--config.mode=export writes, with metadata.json beside it"
        )
    meta_path = os.path.join(os.path.dirname(artifact), METADATA_FILE)
    meta = read_metadata(meta_path)
    record = meta.get("artifacts", {}).get("jax", {})
    blob = _check_artifact_file(artifact, record if isinstance(record, Mapping) else {}, meta_path)
    try:
        exported = jax_export.deserialize(bytearray(blob))
    except Exception as e:  # flatbuffer/MLIR readers raise assorted types for bad bytes
        raise ArtifactError(
            f"{artifact}: cannot be read as a jax.export artifact ({type(e).__name__}: {e}); the "
            "file is corrupt or truncated, or was written by an incompatible jax version "
            f"(this is jax {jax.__version__}; metadata says {meta.get('versions', {}).get('jax')})"
        ) from None
    _check_signature(exported, meta, artifact, meta_path)
    platform = jax_export.default_export_platform()  # "cuda"/"rocm", not jax's "gpu"
    if platform not in exported.platforms:
        raise ArtifactError(
            f"{artifact}: lowered for {list(exported.platforms)}, but jax runs on {platform!r} "
            "here; set JAX_PLATFORMS to one of those, or export again on a machine of this kind"
        )
    if compiler_options is None:
        compiler_options = CPU_COMPILER_OPTIONS if platform == "cpu" else {}
    return Predictor(artifact, exported, meta, compiler_options)
