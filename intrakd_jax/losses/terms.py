"""Distillation methods as composable, weighted terms of the student's objective.

    L = CE + sum over enabled terms of weight * term

One frozen dataclass per method (``IntraKD``, ``KD``, ``AT``, ``SKDPixel``, ``SKDPair``, ``SAD``,
``CWD``) holds its weight, resolved tap names and options; a ``DistillSpec`` is the tuple of
enabled terms. Both are hashable, so a jitted step can close over them.
``distill_spec_from_config`` builds the spec from ``config.distill`` (configs/default.py), and
``distill_losses`` evaluates it inside the train step.

Taps in a config may be a model's tap name or a level, "high" (1/8) or "mid" (1/4), resolved
through the model class's ``tap_levels``; SAD uses the student's ``sad_taps``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from intrakd_jax.errors import ConfigError
from intrakd_jax.losses.baselines import (
    attention_transfer_loss,
    channel_wise_distillation_loss,
    logit_kd_loss,
)
from intrakd_jax.losses.common import weighted_tap_sum
from intrakd_jax.losses.intra_kd import intra_kd_loss
from intrakd_jax.losses.sad import sad_loss
from intrakd_jax.losses.skd import skd_pair_loss, skd_pixel_loss

__all__ = [
    "AT",
    "CWD",
    "KD",
    "SAD",
    "TERMS",
    "DistillSpec",
    "IntraKD",
    "SKDPair",
    "SKDPixel",
    "Term",
    "check_taps",
    "distill_losses",
    "distill_spec_from_config",
]

TapPairs = tuple[tuple[str, str, float], ...]
LEVELS = ("high", "mid")


class TermInputs(NamedTuple):
    """What a term may look at, on one device."""

    student_logits: jax.Array  # (B, H, W, K)
    student_taps: Mapping[str, jax.Array]
    teacher_logits: jax.Array | None
    teacher_taps: Mapping[str, jax.Array] | None
    labels: jax.Array  # (B, H, W)
    step: jax.Array  # int32 scalar: updates done before this one
    ignore_label: int
    axis_name: str | None

    def valid_pixels(self) -> jax.Array:
        return self.labels != self.ignore_label

    def pmean(self, x: jax.Array) -> jax.Array:
        # Per-device batch means over equal shards: their mean is the global batch mean.
        return x if self.axis_name is None else jax.lax.pmean(x, self.axis_name)


def _field(name: str, attr: str) -> str:
    return f"config.distill.{name}.{attr}"


def _number(name: str, attr: str, value: Any, kind: type, minimum: float, inclusive: bool = True):
    """``value`` as ``kind`` (int or float), checked to be finite and above ``minimum``."""
    expected = ConfigError(f"{_field(name, attr)}: expected a {kind.__name__}, got {value!r}")
    if isinstance(value, bool | str) or value is None:
        raise expected
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise expected from None
    if kind is int and number != value:  # 5.0 is fine, 5.5 is not
        raise expected
    ok = math.isfinite(number) and (number >= minimum if inclusive else number > minimum)
    if not ok:
        relation = ">=" if inclusive else ">"
        raise ConfigError(
            f"{_field(name, attr)}: must be finite and {relation} {minimum}, got {value!r}"
        )
    return number


def _choice(name: str, attr: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{_field(name, attr)}: must be one of {list(choices)}, got {value!r}")
    return value


def _tap_pairs(name: str, value: Any) -> TapPairs:
    example = f"--config.distill.{name}.taps=\"(('high','high',1.0),)\""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"{_field(name, 'taps')}: expected a non-empty tuple of (student tap, teacher tap, "
            f"weight), e.g. {example}; got {value!r}"
        )
    pairs = []
    for pair in value:
        if (
            isinstance(pair, str)
            or not isinstance(pair, Sequence)
            or len(pair) != 3
            or not all(isinstance(p, str) for p in pair[:2])
        ):
            raise ConfigError(
                f"{_field(name, 'taps')}: each entry must be (student tap, teacher tap, weight), "
                f"e.g. {example}; got {pair!r}"
            )
        weight = _number(name, "taps weight", pair[2], float, 0.0)
        pairs.append((pair[0], pair[1], weight))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Term:
    """One weighted distillation term. Subclasses set ``name`` and implement ``value``.

    Attributes:
      weight: Multiplies the term's value in the objective (>= 0).
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    weight: float

    def __post_init__(self) -> None:
        self._set("weight", _number(self.name, "weight", self.weight, float, 0.0))

    def _set(self, attr: str, value: Any) -> None:
        # Frozen dataclass: normalise the constructor's values (int -> float, list -> tuple) once.
        object.__setattr__(self, attr, value)

    def value(self, x: TermInputs) -> jax.Array:
        """The term's unweighted value over the global batch (replicated scalar)."""
        raise NotImplementedError

    def tap_uses(self) -> tuple[tuple[str, str], ...]:
        """(role, tap name) of every tap the term reads; role is "student" or "teacher"."""
        return ()

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: _Resolver) -> Term:
        """Builds the term from its ``config.distill.<name>`` section."""
        kwargs = dict(section)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(
                f"config.distill.{cls.name}: unknown option(s) {unknown}; {cls.__name__} has "
                f"{sorted(fields)}"
            )
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(kwargs))
        if missing:
            raise ConfigError(f"config.distill.{cls.name}: missing option(s) {missing}")
        if "taps" in kwargs:
            kwargs["taps"] = ctx.resolve_pairs(cls.name, _tap_pairs(cls.name, kwargs["taps"]))
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _PairTerm(Term):
    """A term summed over (student tap, teacher tap, weight) pairs."""

    taps: TapPairs

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("taps", _tap_pairs(self.name, self.taps))

    def tap_uses(self) -> tuple[tuple[str, str], ...]:
        uses = []
        for s_tap, t_tap, _ in self.taps:
            uses += [("student", s_tap), ("teacher", t_tap)]
        return tuple(uses)

    def pair_loss(self, student_feats: jax.Array, teacher_feats: jax.Array, x: TermInputs):
        """The term on one pair of taps, on one device."""
        raise NotImplementedError

    def value(self, x: TermInputs) -> jax.Array:
        loss_fn = functools.partial(self.pair_loss, x=x)
        total = weighted_tap_sum(
            loss_fn, x.student_taps, x.teacher_taps, self.taps, _field(self.name, "taps")
        )
        return x.pmean(total)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntraKD(_PairTerm):
    """IntRA-KD (METHOD.md section 2); options as ``intra_kd_loss``."""

    name: ClassVar[str] = "intra_kd"
    kernel_size: int = 5
    moment_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    normalizer: str = "soft_mass"
    skew_denominator: str = "std_cubed"
    min_mass: float = 0.0
    skew_floor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("kernel_size", _number(self.name, "kernel_size", self.kernel_size, int, 1))
        self._set("min_mass", _number(self.name, "min_mass", self.min_mass, float, 0.0))
        self._set("skew_floor", _number(self.name, "skew_floor", self.skew_floor, float, 0.0))
        alphas = self.moment_weights
        if isinstance(alphas, str) or not isinstance(alphas, Sequence) or len(alphas) != 3:
            raise ConfigError(
                f"{_field(self.name, 'moment_weights')}: expected 3 weights (mean, variance, "
                f"skewness), got {alphas!r}"
            )
        self._set(
            "moment_weights",
            tuple(_number(self.name, "moment_weights", a, float, 0.0) for a in alphas),
        )
        _choice(self.name, "normalizer", self.normalizer, ("soft_mass", "count", "area"))
        _choice(self.name, "skew_denominator", self.skew_denominator, ("std_cubed", "var"))

    def pair_loss(self, student_feats, teacher_feats, x):  # noqa: D102 (see _PairTerm)
        return intra_kd_loss(
            student_feats,
            teacher_feats,
            x.labels,
            x.student_logits.shape[-1],
            self.kernel_size,
            self.moment_weights,
            x.ignore_label,
            normalizer=self.normalizer,
            skew_denominator=self.skew_denominator,
            min_mass=self.min_mass,
            skew_floor=self.skew_floor,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LogitTerm(Term):
    """A term on the logits with a softmax temperature."""

    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = _number(self.name, "temperature", self.temperature, float, 0.0, inclusive=False)
        self._set("temperature", t)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KD(_LogitTerm):
    """Hinton KD on the logits, over pixels with a label (``logit_kd_loss``)."""

    name: ClassVar[str] = "kd"

    def value(self, x: TermInputs) -> jax.Array:  # noqa: D102 (see Term)
        return logit_kd_loss(
            x.student_logits, x.teacher_logits, self.temperature, x.valid_pixels(), x.axis_name
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AT(_PairTerm):
    """Attention transfer on feature taps (``attention_transfer_loss``)."""

    name: ClassVar[str] = "at"
    p: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("p", _number(self.name, "p", self.p, float, 1.0))

    def pair_loss(self, student_feats, teacher_feats, x):  # noqa: D102 (see _PairTerm)
        return attention_transfer_loss(student_feats, teacher_feats, self.p)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SKDPixel(Term):
    """SKD pixel-wise term on the logits, over pixels with a label (``skd_pixel_loss``)."""

    name: ClassVar[str] = "skd_pixel"

    def value(self, x: TermInputs) -> jax.Array:  # noqa: D102 (see Term)
        return skd_pixel_loss(x.student_logits, x.teacher_logits, x.valid_pixels(), x.axis_name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SKDPair(_PairTerm):
    """SKD pair-wise term on feature taps (``skd_pair_loss``)."""

    name: ClassVar[str] = "skd_pair"
    node_fraction: float = 0.5
    detach_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction = _number(self.name, "node_fraction", self.node_fraction, float, 0.0, False)
        if fraction > 1.0:
            raise ConfigError(
                f"{_field(self.name, 'node_fraction')}: must be in (0, 1], got {fraction}"
            )
        self._set("node_fraction", fraction)
        if not isinstance(self.detach_norm, bool):
            raise ConfigError(
                f"{_field(self.name, 'detach_norm')}: expected True or False, got "
                f"{self.detach_norm!r}"
            )

    def pair_loss(self, student_feats, teacher_feats, x):  # noqa: D102 (see _PairTerm)
        return skd_pair_loss(student_feats, teacher_feats, self.node_fraction, self.detach_norm)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAD(Term):
    """Self-attention distillation over the student's block outputs (``sad_loss``).

    Attributes:
      taps: The student's block taps, earliest first (the model's ``sad_taps``).
      start_step: The term is 0 (value and gradient) for updates before this one; counted as
        ``TrainState.step``, the number of updates already done.
    """

    name: ClassVar[str] = "sad"
    needs_teacher: ClassVar[bool] = False
    taps: tuple[str, ...]
    start_step: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        taps = self.taps
        if (
            isinstance(taps, str)
            or not isinstance(taps, Sequence)
            or len(taps) < 2
            or not all(isinstance(t, str) for t in taps)
        ):
            raise ConfigError(
                f"config.distill.sad: needs at least two student block taps (the student "
                f"model's sad_taps), got {taps!r}"
            )
        self._set("taps", tuple(taps))
        self._set("start_step", _number(self.name, "start_step", self.start_step, int, 0))

    def tap_uses(self) -> tuple[tuple[str, str], ...]:  # noqa: D102 (see Term)
        return tuple(("student", t) for t in self.taps)

    def value(self, x: TermInputs) -> jax.Array:  # noqa: D102 (see Term)
        missing = [t for t in self.taps if t not in x.student_taps]
        if missing:
            raise KeyError(
                f"config.distill.sad: student taps {missing} not found; available student taps: "
                f"{sorted(x.student_taps)}"
            )
        loss = x.pmean(sad_loss([x.student_taps[t] for t in self.taps]))
        # Inside the compiled step: switching on changes a value, not the program.
        return jnp.where(x.step >= self.start_step, loss, jnp.zeros_like(loss))

    @classmethod
    def from_config(cls, section: Mapping[str, Any], ctx: _Resolver) -> Term:
        """Weight and start fraction from the config, taps from the student's ``sad_taps``."""
        kwargs = dict(section)
        unknown = sorted(set(kwargs) - {"weight", "start_fraction"})
        if unknown:
            raise ConfigError(
                f"config.distill.sad: unknown option(s) {unknown}; SAD has "
                "['start_fraction', 'weight']"
            )
        fraction = _number("sad", "start_fraction", kwargs.get("start_fraction", 0.0), float, 0.0)
        if fraction > 1.0:
            raise ConfigError(
                f"config.distill.sad.start_fraction: must be in [0, 1], got {fraction}"
            )
        return cls(
            weight=kwargs.get("weight"),
            taps=ctx.sad_taps(),
            start_step=int(fraction * ctx.num_train_steps),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CWD(_LogitTerm):
    """Channel-wise distillation on the logits (``channel_wise_distillation_loss``)."""

    name: ClassVar[str] = "cwd"

    def value(self, x: TermInputs) -> jax.Array:  # noqa: D102 (see Term)
        return x.pmean(
            channel_wise_distillation_loss(x.student_logits, x.teacher_logits, self.temperature)
        )


TERMS: dict[str, type[Term]] = {
    cls.name: cls for cls in (IntraKD, KD, AT, SKDPixel, SKDPair, SAD, CWD)
}


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """The enabled distillation terms, in order; hashable and static.

    Attributes:
      terms: One ``Term`` per method, each name at most once. Empty: no distillation.
    """

    terms: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        for term in terms:
            if not isinstance(term, Term):
                raise TypeError(f"DistillSpec: terms must be Term instances, got {term!r}")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"config.distill.terms: each term at most once, got {names}")
        object.__setattr__(self, "terms", terms)

    @property
    def names(self) -> tuple[str, ...]:
        """The enabled terms' names, in order."""
        return tuple(t.name for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        """Whether any enabled term reads the teacher's logits or taps."""
        return any(t.needs_teacher for t in self.terms)

    def _taps(self, role: str) -> tuple[str, ...]:
        names = [n for t in self.terms for r, n in t.tap_uses() if r == role]
        return tuple(dict.fromkeys(names))

    @property
    def student_taps(self) -> tuple[str, ...]:
        """Distinct student tap names the terms read, in first-use order."""
        return self._taps("student")

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        """Distinct teacher tap names the terms read, in first-use order."""
        return self._taps("teacher")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def _model_name(model: Any) -> str:
    return model.__name__ if isinstance(model, type) else type(model).__name__


@dataclasses.dataclass(frozen=True)
class _Resolver:
    """Resolves config tap names against the models' class attributes."""

    student: Any
    teacher: Any
    num_train_steps: int

    def resolve(self, model: Any, role: str, name: str, field: str) -> str:
        levels = dict(getattr(model, "tap_levels", None) or {})
        if name in levels:
            return levels[name]
        declared = sorted(set(levels.values()) | set(getattr(model, "sad_taps", None) or ()))
        if levels and name not in declared:
            raise ConfigError(
                f"{field}: {role} tap {name!r} is neither a level {sorted(levels)} nor a tap of "
                f"the {role} model {_model_name(model)} {declared}"
            )
        if name in LEVELS:
            raise ConfigError(
                f"{field}: the {role} model {_model_name(model)} declares no tap_levels, so the "
                f"level {name!r} cannot be resolved; name one of its taps instead"
            )
        return name

    def resolve_pairs(self, term: str, pairs: TapPairs) -> TapPairs:
        field = _field(term, "taps")
        return tuple(
            (
                self.resolve(self.student, "student", s, field),
                self.resolve(self.teacher, "teacher", t, field),
                w,
            )
            for s, t, w in pairs
        )

    def sad_taps(self) -> tuple[str, ...]:
        taps = tuple(getattr(self.student, "sad_taps", None) or ())
        if len(taps) < 2:
            raise ConfigError(
                f"config.distill.terms: 'sad' needs the student's block outputs, but the student "
                f"model {_model_name(self.student)} declares sad_taps={taps!r} (at least two)"
            )
        return taps


def _term_names(value: Any) -> tuple[str, ...]:
    """``config.distill.terms``: a tuple of names, a comma string, or a tuple of comma strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence):
        raise ConfigError(
            f"config.distill.terms: expected a tuple of names or a comma-separated string, got "
            f"{value!r}"
        )
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"config.distill.terms: expected names, got {item!r} in {value!r}")
        names += [n.strip() for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in TERMS]
    if unknown:
        raise ConfigError(
            f"config.distill.terms: unknown term(s) {unknown}; known terms: {list(TERMS)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"config.distill.terms: each term at most once, got {names}")
    return tuple(names)


def distill_spec_from_config(
    distill_cfg: Mapping[str, Any],
    num_train_steps: int,
    student_model: Any,
    teacher_model: Any = None,
) -> DistillSpec:
    """The distillation spec of ``config.distill``, taps resolved for the given models.

    Args:
      distill_cfg: ``config.distill``: ``terms`` (names, a tuple or a comma string such as
        ``"intra_kd,kd"``) and one section per term (configs/default.py).
      num_train_steps: The student's number of updates (SAD's start step is a fraction of it).
      student_model: The student (instance or class); its ``tap_levels`` and ``sad_taps``
        resolve level names and SAD's taps.
      teacher_model: The teacher (instance or class), or None when no enabled term needs one.

    Returns:
      The ``DistillSpec``; levels are replaced by the models' tap names.

    Raises:
      ConfigError: an unknown term, option or level, a bad value, a missing section, or a term
        that needs a teacher without one; the message names the config field.
    """
    names = _term_names(distill_cfg["terms"] if "terms" in distill_cfg else None)
    resolver = _Resolver(student_model, teacher_model, int(num_train_steps))
    terms = []
    for name in names:
        cls = TERMS[name]
        if cls.needs_teacher and teacher_model is None:
            raise ConfigError(
                f"config.distill.terms: {name!r} needs a teacher, but no teacher model was given"
            )
        if name not in distill_cfg:
            raise ConfigError(f"config.distill.{name}: missing (the section of an enabled term)")
        terms.append(cls.from_config(distill_cfg[name], resolver))
    return DistillSpec(tuple(terms))


def check_taps(
    spec: DistillSpec, student_taps: Iterable[str], teacher_taps: Iterable[str] | None
) -> None:
    """Fails before anything is compiled if a term reads a tap a model does not have.

    Args:
      spec: The distillation spec.
      student_taps: The student's tap names (e.g. from ``jax.eval_shape`` of its init).
      teacher_taps: The teacher's tap names, or None without a teacher.

    Raises:
      ConfigError: naming the term's config field, the missing tap and the model's taps.
    """
    available = {"student": sorted(student_taps), "teacher": sorted(teacher_taps or ())}
    for term in spec.terms:
        for role, tap in term.tap_uses():
            if tap not in available[role]:
                where = (
                    "the student's sad_taps" if term.name == "sad" else _field(term.name, "taps")
                )
                raise ConfigError(
                    f"{where}: {role} tap {tap!r} not found; the {role}'s taps are "
                    f"{available[role]}"
                )


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def distill_losses(
    spec: DistillSpec,
    student_logits: jax.Array,
    student_taps: Mapping[str, jax.Array],
    teacher_logits: jax.Array | None,
    teacher_taps: Mapping[str, jax.Array] | None,
    labels: jax.Array,
    step: jax.Array | int,
    *,
    ignore_label: int = 255,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Evaluates every term of ``spec``.

    Args:
      spec: The distillation spec.
      student_logits: (B, H, W, K) student logits.
      student_taps: The student's taps.
      teacher_logits: (B, H, W, K) teacher logits, or None when ``spec.needs_teacher`` is False.
      teacher_taps: The teacher's taps, or None likewise.
      labels: (B, H, W) integer labels (ignore pixels are skipped by the per-pixel terms).
      step: Number of updates done before this one (SAD's switch).
      ignore_label: Label value of unlabelled pixels.
      axis_name: The data axis when called inside ``shard_map`` over a batch split across
        devices: every value is then the global batch's (pixel terms sum their sums and counts,
        the others average equal-sized shards' means).

    Returns:
      (weighted total sum_t weight_t * value_t, {name: unweighted value}); float32 scalars (or
      float64 under x64 with float64 inputs). SAD's value is 0 before its start step.
    """
    if spec.needs_teacher and (teacher_logits is None or teacher_taps is None):
        raise ValueError(
            f"distill_losses: terms {[t.name for t in spec.terms if t.needs_teacher]} need the "
            "teacher's logits and taps"
        )
    x = TermInputs(
        student_logits,
        student_taps,
        teacher_logits,
        teacher_taps,
        labels,
        jnp.asarray(step),
        int(ignore_label),
        axis_name,
    )
    values = {term.name: term.value(x) for term in spec.terms}
    total = jnp.zeros((), jnp.float32)
    for term in spec.terms:
        total = total + term.weight * values[term.name]
    return total, values
