"""Data check: walk every example of a dataset and list every problem with its file (and line).

``check_dataset(dataset)`` collects, per split:

* the reader's list/layout problems (``dataset.list_problems(split)``: malformed list lines with
  file and line, files the lists reference that do not exist);
* missing image/label files of the examples (``dataset.check_examples(split)``);
* images and labels that do not decode fully (truncated or garbage files: decoded with Pillow,
  which rejects truncated JPEGs that ``cv2.imread`` silently returns half-grey);
* label values outside the class table (``dataset.check_label(path)``);
* image/label size mismatches;
* for LLAMAS, json label files that do not parse (with the line of the syntax error) or lack
  fields (``formats.llamas.read_json``'s validation), and lanes that lie entirely outside
  their image (``label_value``: they would render to nothing).

Files are read by a thread pool (decoding releases the GIL); progress and ETA are logged. The
returned ``CheckReport`` prints every problem (a ``formats.lists.Problem``, ``format()``) and a
per-split, per-kind summary.
``python main.py --config=... --config.mode=check_data`` runs it and exits non-zero when the
report is not clean.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence

from PIL import Image

from data_pipelines import llamas
from data_pipelines.errors import DataError, LabelFormatError
from data_pipelines.formats.lists import KINDS, Problem
from data_pipelines.formats.llamas import COLOR_SUFFIX, clean_label
from data_pipelines.util import ProgressLogger, format_seconds


@dataclasses.dataclass
class CheckReport:
    """What ``check_dataset`` found.

    Attributes:
        dataset: dataset name.
        problems: split -> problems, in discovery order (list problems first).
        num_examples: split -> examples whose files were checked.
        num_files: image and label files decoded in all.
        seconds: wall time of the check.
    """

    dataset: str
    problems: dict[str, list[Problem]]
    num_examples: dict[str, int]
    num_files: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no split has a problem."""
        return not any(self.problems.values())

    @property
    def num_problems(self) -> int:
        """Problems over all splits."""
        return sum(len(p) for p in self.problems.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """Problem counts as split -> kind -> n (every kind present, zeros included)."""
        out = {}
        for split, problems in self.problems.items():
            c = collections.Counter(p.kind for p in problems)
            out[split] = {kind: c.get(kind, 0) for kind in KINDS}
        return out

    def images_per_second(self) -> float:
        """Examples checked per second."""
        return sum(self.num_examples.values()) / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """A per-split table of problem counts by kind, and the verdict."""
        counts = self.counts()
        header = ["split", "examples", *KINDS, "total"]
        rows = [
            [split, str(self.num_examples.get(split, 0)), *map(str, c.values()),
             str(sum(c.values()))]
            for split, c in counts.items()
        ]  # fmt: skip
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        n_ex = sum(self.num_examples.values())
        verdict = (
            "OK: no problems found"
            if self.ok
            else f"FAILED: {self.num_problems} problem(s) in {self.dataset}"
        )
        lines.append(
            f"{verdict} ({n_ex} examples, {self.num_files} files in "
            f"{format_seconds(self.seconds)}, {self.images_per_second():.1f} examples/s)"
        )
        return "\n".join(lines)

    def format(self) -> str:
        """Every problem, one per line grouped by split, then the summary."""
        lines = [f"Data check of {self.dataset}"]
        for split, problems in self.problems.items():
            if problems:
                lines.append(f"\n{split}: {len(problems)} problem(s)")
                lines += [f"  {p.format()}" for p in problems]
        lines.append("")
        lines.append(self.summary())
        if not self.ok:
            used = {p.kind for ps in self.problems.values() for p in ps}
            lines.append("Kinds: " + "; ".join(f"{k}: {KINDS[k]}" for k in KINDS if k in used))
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-serialisable form (problems as dicts)."""
        return {
            "dataset": self.dataset,
            "ok": self.ok,
            "num_examples": self.num_examples,
            "num_files": self.num_files,
            "seconds": self.seconds,
            "counts": self.counts(),
            "problems": {s: [_problem_json(p) for p in ps] for s, ps in self.problems.items()},
        }


def _problem_json(p: Problem) -> dict:
    # ``blocking`` matters to the readers only: the report lists every problem alike.
    return {"kind": p.kind, "path": p.path, "line": p.line, "message": p.message}


# ----------------------------------------------------------------------------------------------
# Per-example checks.


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One example to check: its files and how to check its label.

    ``check_label(path) -> ((h, w) or None, problems)``; ``expected_hw``, when set, is the size the
    image must have (LLAMAS labels are rendered at the split's size, so a different image
    mismatches its label).
    """

    image_path: str
    label_path: str | None
    check_label: Callable[[str], tuple[tuple[int, int] | None, list[Problem]]] | None
    expected_hw: tuple[int, int] | None = None


def decode_image_fully(path: str) -> tuple[int, int]:
    """Decodes every pixel of an image file and returns its (height, width).

    Raises:
        OSError: missing, truncated or not an image (``PIL.UnidentifiedImageError`` included).
    """
    with Image.open(path) as im:
        im.load()  # truncated JPEG/PNG data raises here ("image file is truncated")
        return im.height, im.width


def _error_text(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _check_entry(entry: _Entry) -> tuple[list[Problem], int]:
    """The problems of one example and the number of files decoded."""
    problems: list[Problem] = []
    decoded = 0
    image_hw = None
    if not os.path.isfile(entry.image_path):
        problems.append(Problem("missing_file", entry.image_path, None, "image file is missing"))
    else:
        try:
            image_hw = decode_image_fully(entry.image_path)
            decoded += 1
        except Exception as e:  # noqa: BLE001 -- any decoder failure is this file's problem
            problems.append(
                Problem("unreadable_image", entry.image_path, None, f"cannot decode image: "
                        f"{_error_text(e)}")
            )  # fmt: skip
    if entry.expected_hw is not None and image_hw is not None and image_hw != entry.expected_hw:
        problems.append(
            Problem(
                "size_mismatch",
                entry.image_path,
                None,
                f"image is {image_hw[1]}x{image_hw[0]} (WxH) but its label is rendered at "
                f"{entry.expected_hw[1]}x{entry.expected_hw[0]} (the split's first image)",
            )
        )
    if entry.label_path is None or entry.check_label is None:
        return problems, decoded
    if not os.path.isfile(entry.label_path):
        problems.append(Problem("missing_file", entry.label_path, None, "label file is missing"))
        return problems, decoded
    label_hw, label_problems = entry.check_label(entry.label_path)
    problems += label_problems
    if label_hw is not None:
        decoded += 1
        if image_hw is not None and label_hw != image_hw:
            problems.append(
                Problem(
                    "size_mismatch",
                    entry.label_path,
                    None,
                    f"label is {label_hw[1]}x{label_hw[0]} (WxH) but its image "
                    f"{entry.image_path} is {image_hw[1]}x{image_hw[0]}",
                )
            )
    return problems, decoded


def _reader_label_checker(dataset) -> Callable[[str], tuple[tuple[int, int] | None, list]]:
    """Wraps ``dataset.check_label`` into Problems (unreadable files included)."""

    def check(path: str):
        try:
            hw, messages = dataset.check_label(path)
        except Exception as e:  # noqa: BLE001 -- any decoder failure is this file's problem
            return None, [
                Problem("unreadable_image", path, None, f"cannot decode label: {_error_text(e)}")
            ]
        return tuple(hw), [Problem("label_value", path, None, m) for m in messages]

    return check


# ----------------------------------------------------------------------------------------------
# What to check per split.


def _generic_plan(dataset, split: str) -> tuple[list[Problem], list[_Entry]]:
    """List problems from the reader, then every example it can list."""
    problems = list(dataset.list_problems(split))
    try:
        examples = dataset.check_examples(split)
    except DataError as e:
        if not problems:  # a strict listing failed on something list_problems did not report
            problems.append(_problem_from_error(e))
        examples = []
    checker = _reader_label_checker(dataset)
    entries = [
        _Entry(e.image_path, e.label_path, checker if e.label_path is not None else None)
        for e in examples
    ]
    return problems, entries


def _problem_from_error(e: DataError) -> Problem:
    text = _error_text(e)
    m = re.match(r"^(?P<path>[^:\s][^:]*):(?P<line>\d+):\s*(?P<msg>.*)$", text)
    if m:
        return Problem("malformed_line", m["path"], int(m["line"]), m["msg"])
    if isinstance(e, LabelFormatError):
        return Problem("malformed_label", text.split(":", 1)[0], None, text)
    return Problem("missing_file", "", None, text)


def _lanes_outside(label: dict, image_hw: tuple[int, int] | None) -> list[str]:
    """Messages for the lanes of a cleaned LLAMAS label with no pixel point inside the image.

    Such a lane renders to nothing (the official renderer clips it away), so its annotation does
    not belong to this image (another resolution, shifted coordinates). A lane that is only
    partly outside is normal and not reported.
    """
    if image_hw is None:
        return []
    h, w = image_hw
    out = []
    for lane in label["lanes"]:
        points = [m[k] for m in lane["markers"] for k in ("pixel_start", "pixel_end")]
        if not any(0 <= p["x"] < w and 0 <= p["y"] < h for p in points):
            xs = [p["x"] for p in points]
            ys = [p["y"] for p in points]
            out.append(
                f"lane {lane['lane_id']!r} (after the official renumbering) lies entirely outside "
                f"the {w}x{h} (WxH) image: its {len(lane['markers'])} markers span x "
                f"{min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}"
            )
    return out


def _llamas_label_checker(min_lane_height: int, image_hw: tuple[int, int] | None = None):
    def check(path: str):
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            return None, [Problem("malformed_line", path, e.lineno, f"invalid json: {e.msg}")]
        except RecursionError:
            return None, [Problem("malformed_line", path, None, "invalid json: nested too deeply")]
        except (OSError, UnicodeDecodeError) as e:
            return None, [Problem("unreadable_image", path, None, f"cannot read: {e}")]
        except ValueError as e:  # the decoder's int() limit (numbers of more than 4300 digits)
            return None, [Problem("malformed_line", path, None, f"invalid json: {e}")]
        try:
            label = clean_label(raw, min_lane_height=min_lane_height, source=path)
        except LabelFormatError as e:
            message = str(e)
            if message.startswith(path + ": "):
                message = message[len(path) + 2 :]
            return None, [Problem("malformed_label", path, None, message)]
        # Rendered labels take the split's size and only table values; what can still be wrong
        # is a lane that misses the image altogether.
        return None, [
            Problem("label_value", path, None, m) for m in _lanes_outside(label, image_hw)
        ]

    return check


def llamas_plan(dataset, split: str) -> tuple[list[Problem], list[_Entry]]:
    """LLAMAS: pairs color images and json labels leniently (every mismatch is a problem).

    Args:
        dataset: a ``LlamasDataset`` (its synthetic data are generated first if configured).
        split: ``train``, ``valid`` or ``test``.

    Returns:
        ``(problems, entries)`` of the split (all files, ``max_examples`` ignored).
    """
    ensure = getattr(dataset, "_ensure_generated", None)
    if callable(ensure):
        ensure()
    root = dataset.data_dir
    image_root = os.path.join(root, "color_images", split)
    label_root = os.path.join(root, "labels", split)
    problems: list[Problem] = []
    if not os.path.isdir(image_root):
        problems.append(
            Problem("missing_file", image_root, None, f"LLAMAS {split} image folder is missing")
        )
    images = llamas.list_frames(image_root, COLOR_SUFFIX)
    has_labels = os.path.isdir(label_root)
    if not has_labels and split != "test":
        problems.append(
            Problem("missing_file", label_root, None, f"LLAMAS {split} label folder is missing")
        )
    labels = llamas.list_frames(label_root, ".json")
    for key in sorted(set(images) - set(labels) if has_labels else ()):
        rec, ts = key.split("/")
        problems.append(
            Problem(
                "missing_file",
                os.path.join(label_root, rec, ts + ".json"),
                None,
                f"label of image {images[key]} is missing",
            )
        )
    for key in sorted(set(labels) - set(images)):
        rec, ts = key.split("/")
        problems.append(
            Problem(
                "missing_file",
                os.path.join(image_root, rec, ts + COLOR_SUFFIX),
                None,
                f"image of label {labels[key]} is missing",
            )
        )
    keys = sorted(k for k in images if (k in labels) or not has_labels)
    expected_hw = None
    if keys and has_labels:
        try:  # the reader renders every label of a split at its first image's size
            with Image.open(images[keys[0]]) as im:
                expected_hw = (im.height, im.width)
        except OSError:
            expected_hw = None
    checker = _llamas_label_checker(int(getattr(dataset, "_min_lane_height", 20)), expected_hw)
    entries = [
        _Entry(images[k], labels.get(k), checker if k in labels else None, expected_hw)
        for k in keys
    ]
    return problems, entries


def _dedupe(problems: Sequence[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        ident = (p.kind, p.path, p.line)
        if ident not in seen:
            seen.add(ident)
            out.append(p)
    return out


# ----------------------------------------------------------------------------------------------
# The check.


def check_dataset(
    dataset,
    splits: Sequence[str] | None = None,
    num_workers: int | None = None,
    progress_every_s: float = 10.0,
) -> CheckReport:
    """Walks every example of every split and lists every problem (see the module docstring).

    Args:
        dataset: a ``SegmentationDataset`` reader (files source; caps like ``max_examples`` of
            the LLAMAS reader are ignored, generic readers are checked as they list).
        splits: splits to check; default all of ``dataset.SPLITS``.
        num_workers: reading threads (default: 2 per CPU, at most 16).
        progress_every_s: seconds between progress lines.

    Returns:
        The report; ``report.ok`` is False when anything is wrong.

    Raises:
        ValueError: an unknown split.
    """
    splits = tuple(splits) if splits else tuple(dataset.SPLITS)
    for split in splits:
        if split not in dataset.SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {list(dataset.SPLITS)}")
    workers = num_workers or min(16, 2 * (os.cpu_count() or 1))
    name = dataset.info.name
    start = time.monotonic()
    report = CheckReport(dataset=name, problems={}, num_examples={})
    plan = llamas_plan if isinstance(dataset, llamas.LlamasDataset) else _generic_plan
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for split in splits:
            problems, entries = plan(dataset, split)
            progress = ProgressLogger(f"check {name} {split}", len(entries), progress_every_s)
            for found, decoded in pool.map(_check_entry, entries):
                problems += found
                report.num_files += decoded
                progress.update()
            progress.finish()
            report.problems[split] = _dedupe(problems)
            report.num_examples[split] = len(entries)
    report.seconds = time.monotonic() - start
    return report
