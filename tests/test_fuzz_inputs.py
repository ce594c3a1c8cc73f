"""Hostile input: property-based tests of every file parser and of config overrides.

The property, for each reader: any input (random bytes, non-UTF-8, NUL, huge numbers, NaN/inf,
missing fields, deep or odd JSON, extra columns, empty files) either parses into well-typed
values or raises the project's named error, whose message names the file and the line (or the
field); never another exception type, never a hang (hypothesis' ``deadline`` per example).
Where the inputs are built from known valid and known broken lines, the parse is also compared
with the expected entries and problem lines written out here (independently of the readers).

Readers covered: CULane lists (``formats.culane``), ApolloScape lists (``formats.apolloscape``),
the shared list reader (``formats.lists.read_list_lines``), LLAMAS json labels
(``formats.llamas.read_json``/``clean_label``, the renderers and the data check's json
checker), the two ``.lines.txt`` readers (``evaluation.culane_lanes.read_lane_file``,
``evaluation.llamas_lanes.read_lines_txt``) and config overrides (``--config=<file>:<variant>``
and ``--config.x=y`` parsed as main.py parses them, then ``building.check_config``).

Profiles (registered here, not in conftest.py): ``ci`` (the default) is derandomized (fixed
seed) with a few hundred examples per test, a few seconds each; ``long`` draws 20000 random
examples per test. Run the long one with::

    INTRAKD_FUZZ_PROFILE=long python -m pytest tests/test_fuzz_inputs.py

and add ``--hypothesis-show-statistics`` to see how many examples each test ran.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import tempfile
import warnings

import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from ml_collections import config_flags

from data_pipelines import check
from data_pipelines.errors import DataError, DatasetLayoutError, LabelFormatError
from data_pipelines.formats import apolloscape as apollo
from data_pipelines.formats import culane
from data_pipelines.formats import llamas as llamas_format
from data_pipelines.formats.lists import ProblemLog, read_list_lines
from intrakd_jax import building
from intrakd_jax.errors import ConfigError
from intrakd_jax.evaluation import culane_lanes, llamas_lanes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# On a failure hypothesis' pytest plugin writes a patch of the failing example under
# <cwd>/.hypothesis and imports its patching module, whose dependencies warn at import (an error
# under this project's filterwarnings, which would hide the failure behind an INTERNALERROR):
# keep its files out of the repository and import it once here with that warning silenced.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "intrakd_fuzz_hypothesis"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # its optional dependency (libcst) is missing: nothing is written
        pass

# ---------------------------------------------------------------------------------------------
# Profiles.

settings.register_profile(
    "ci",
    derandomize=True,  # a fixed seed: CI runs the same examples every time
    max_examples=200,
    deadline=2000,  # ms per example: a parser that hangs (catastrophic regex) fails here
    database=None,  # nothing written into the repository (.hypothesis/)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=20000,
    derandomize=False,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
PROFILE_NAME = os.environ.get("INTRAKD_FUZZ_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)


def fuzz(ci_examples: int) -> settings:
    """The chosen profile, with ``ci_examples`` examples in the ci profile (scaled to the cost)."""
    if PROFILE_NAME == "ci":
        return settings(PROFILE, max_examples=ci_examples)
    return settings(PROFILE)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One folder for the files written by the examples (session-scoped: hypothesis-safe)."""
    return tmp_path_factory.mktemp("fuzz")


def write(folder, name: str, data: bytes) -> str:
    path = os.path.join(str(folder), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------------------------------------
# Independent reading of a text file's lines (what an editor numbers).


def oracle_lines(data: bytes) -> list[str]:
    """The lines of a text file as Python's universal newlines number them (1-based order)."""
    text = data.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def nonblank_numbers(data: bytes) -> set[int]:
    return {n for n, line in enumerate(oracle_lines(data), start=1) if line.strip()}


def encodable(text: str) -> bool:
    """Whether a message can be printed on a UTF-8 terminal or written to a UTF-8 file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Building blocks of hostile lines.

NASTY_TOKENS = [
    "0",
    "1",
    "2",
    "-1",
    "+1",
    "01",
    "1.0",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit and \d, not to int() users
    "nan",
    "inf",
    "-inf",
    "1e400",
    "9" * 400,
    "\x00",
    "/",
    "//",
    "a.jpg",
    "b.png",
    ".png",
    "x.JPG",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x1c",
    "e5",
    "#",
]
SEPARATORS = [" ", "\t", "  ", "\x0b", "\x0c", "\x1c", "\u2028", "\x85", ""]
NEWLINES = [b"\n", b"\r\n", b"\r"]
# Bytes of a line: anything but the line breaks of universal newlines.
line_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
token_soup = st.lists(
    st.tuples(st.sampled_from(NASTY_TOKENS) | st.text(max_size=6), st.sampled_from(SEPARATORS)),
    max_size=8,
).map(lambda parts: "".join(t + s for t, s in parts).replace("\n", "").replace("\r", ""))
random_line = line_bytes | token_soup.map(lambda s: s.encode("utf-8", "surrogatepass"))
blank_line = st.sampled_from([b"", b" ", b"\t", b"  \t ", b"\x0b", b"\x0c"])


def join_lines(lines: list[bytes], newline: bytes, final: bool) -> bytes:
    return newline.join(lines) + (newline if final and lines else b"")


def surrogate_free(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# The shared list reader.


@fuzz(300)
@given(
    lines=st.lists(random_line | blank_line, max_size=12),
    newline=st.sampled_from(NEWLINES),
    final=st.booleans(),
)
def test_read_list_lines_numbers_lines_as_an_editor_does(scratch, lines, newline, final):
    data = join_lines(lines, newline, final)
    path = write(scratch, "list.txt", data)
    log = ProblemLog(strict=False)
    got = read_list_lines(path, log, "'<image>'")
    expected = [(n, line) for n, line in enumerate(oracle_lines(data), start=1) if line.strip()]
    assert got == expected
    assert log.problems == []


def test_read_list_lines_missing_and_unreadable_files(scratch):
    log = ProblemLog(strict=False)
    assert read_list_lines(os.path.join(str(scratch), "nope.txt"), log, "X") == []
    assert read_list_lines(str(scratch), log, "X") == []  # a folder, not a file
    assert [p.kind for p in log.problems] == ["missing_file", "missing_file"]
    with pytest.raises(DatasetLayoutError, match="nope.txt"):
        read_list_lines(os.path.join(str(scratch), "nope.txt"), ProblemLog(strict=True), "X")


# ---------------------------------------------------------------------------------------------
# CULane lists.

CULANE_DATA_DIR = "/data/CULane"


@st.composite
def culane_list(draw, fmt: str):
    """(file bytes, {line: expected ListEntry fields}, known bad line numbers, root_rewrite)."""
    rewrite = draw(st.sampled_from([None, ("/home/someone/CULane/", "")]))
    specs = draw(
        st.lists(st.sampled_from(["valid", "bad", "random", "blank"]), min_size=0, max_size=10)
    )
    lines, valid, bad = [], {}, set()
    for number, kind in enumerate(specs, start=1):
        clip = draw(st.integers(0, 3))
        rel_image = f"driver_23_30frame/0515_{clip:04d}.MP4/00000.jpg"
        rel_label = f"laneseg_label_w16/driver_23_30frame/0515_{clip:04d}.MP4/00000.png"
        prefix = draw(
            st.sampled_from(
                ["/", CULANE_DATA_DIR + "/"] + ([rewrite[0]] if rewrite is not None else [])
            )
        )
        sep = draw(st.sampled_from([" ", "\t", "  "]))
        flags_ = draw(st.tuples(*[st.sampled_from(["0", "1"])] * 4))
        fields = (
            [prefix + rel_image, prefix + rel_label, *flags_]
            if fmt == "gt"
            else [prefix + rel_image]
        )
        if kind == "valid":
            lines.append(surrogate_free(sep.join(fields) + draw(st.sampled_from(["", " ", "\t"]))))
            valid[number] = (
                rel_image,
                rel_label if fmt == "gt" else None,
                tuple(int(f) for f in flags_) if fmt == "gt" else None,
            )
        elif kind == "bad":
            how = draw(st.sampled_from(["drop", "extra", "flag", "root", "double_slash"]))
            if how == "drop" and fmt == "gt":
                del fields[draw(st.integers(0, len(fields) - 1))]
            elif how == "extra" or how == "drop":
                fields.insert(
                    draw(st.integers(0, len(fields))),
                    draw(st.sampled_from(NASTY_TOKENS[:14])).strip() or "x",
                )
            elif how == "flag" and fmt == "gt":
                fields[2 + draw(st.integers(0, 3))] = draw(
                    st.sampled_from(["2", "-1", "01", "1.0", "\u0661", "x", "\x00", "nan"])
                )
            elif how == "root" or how == "flag":
                fields[0] = "/"
            else:
                fields[0] = "//" + rel_image
            lines.append(surrogate_free(sep.join(fields)))
            bad.add(number)
        elif kind == "random":
            lines.append(draw(random_line))
        else:
            lines.append(draw(blank_line))
    data = join_lines(lines, draw(st.sampled_from(NEWLINES)), draw(st.booleans()))
    return data, valid, bad, rewrite


def check_culane_parse(path, data, valid, bad, fmt, rewrite, strict):
    firsts = {n for n in valid if not any(m < n and valid[m][0] == valid[n][0] for m in valid)}
    bad = bad | (set(valid) - firsts)  # a repeated image is a problem too
    try:
        entries, problems = culane.parse_list(
            path, fmt, data_dir=CULANE_DATA_DIR, root_rewrite=rewrite, strict=strict
        )
    except DatasetLayoutError as e:
        assert strict
        m = re.match(re.escape(path) + r":(\d+): ", str(e))
        assert m, str(e)
        number = int(m.group(1))
        assert number in nonblank_numbers(data) and number not in firsts
        if bad:
            assert number <= min(bad)
        return
    nonblank = nonblank_numbers(data)
    problem_lines = [p.line for p in problems]
    entry_lines = [e.line for e in entries]
    # Every non-blank line is an entry or one problem at its own line, never both.
    assert sorted(problem_lines + entry_lines) == sorted(nonblank)
    assert all(p.path == path and p.kind == "malformed_line" for p in problems)
    assert all(encodable(p.format()) for p in problems)
    assert bad <= set(problem_lines)
    if strict:
        assert not problems and not bad
    seen = set()
    for entry in entries:
        assert entry.image and not entry.image.startswith("/")
        if entry.line in valid:
            assert (entry.image, entry.label, entry.exist) == valid[entry.line]
        assert entry.image not in seen
        seen.add(entry.image)
    assert firsts <= set(entry_lines)


@fuzz(300)
@given(case=culane_list("gt"), strict=st.booleans())
def test_culane_gt_list(scratch, case, strict):
    data, valid, bad, rewrite = case
    path = write(scratch, "train_gt.txt", data)
    check_culane_parse(path, data, valid, bad, "gt", rewrite, strict)


@fuzz(200)
@given(case=culane_list("image"), strict=st.booleans())
def test_culane_image_list(scratch, case, strict):
    data, valid, bad, rewrite = case
    path = write(scratch, "test.txt", data)
    check_culane_parse(path, data, valid, bad, "image", rewrite, strict)


@fuzz(150)
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["gt", "image"]))
def test_culane_list_random_bytes(scratch, data, fmt):
    path = write(scratch, "random.txt", data)
    entries, problems = culane.parse_list(path, fmt, strict=False)
    nonblank = nonblank_numbers(data)
    assert sorted([p.line for p in problems] + [e.line for e in entries]) == sorted(nonblank)
    try:
        culane.parse_list(path, fmt, strict=True)
    except DatasetLayoutError as e:
        assert str(e).startswith(f"{path}:{problems[0].line}: ")


@fuzz(300)
@given(
    raw=st.text(max_size=40) | st.sampled_from(NASTY_TOKENS),
    data_dir=st.sampled_from([None, "", "/data/CULane", "/data/CULane/", "/"]),
    rewrite=st.none() | st.tuples(st.text(max_size=8), st.text(max_size=8)),
)
def test_culane_normalize_list_path(raw, data_dir, rewrite):
    out = culane.normalize_list_path(raw, data_dir, rewrite)
    assert isinstance(out, str)
    path = raw
    if rewrite is not None and rewrite[0] and raw.startswith(rewrite[0]):
        path = rewrite[1] + raw[len(rewrite[0]) :]
    if data_dir and data_dir.rstrip("/") and path.startswith(data_dir.rstrip("/") + "/"):
        path = path[len(data_dir.rstrip("/")) :]
    assert out == (path[1:] if path.startswith("/") else path)


@fuzz(300)
@given(
    fields=st.lists(
        st.sampled_from(NASTY_TOKENS) | st.text(min_size=1, max_size=8), min_size=6, max_size=6
    ),
    fmt=st.sampled_from(["gt", "image"]),
)
def test_culane_parse_line(fields, fmt):
    fields = fields if fmt == "gt" else fields[:1]  # parse_list checks the count first
    out = culane._parse_line(fields, fmt, CULANE_DATA_DIR, None)
    if isinstance(out, str):
        assert out  # a reason
        return
    paths, exist = out
    assert all(p and not p.startswith("/") for p in paths)
    if fmt == "gt":
        assert len(paths) == 2 and all(f in (0, 1) for f in exist) and len(exist) == 4
        assert [str(f) for f in exist] == fields[2:]
    else:
        assert len(paths) == 1 and exist is None


# ---------------------------------------------------------------------------------------------
# ApolloScape lists.

APOLLO_IMAGES = 3


@pytest.fixture(scope="module")
def apollo_root(tmp_path_factory):
    """A root with APOLLO_IMAGES empty image/label files (list parsing only checks existence)."""
    root = tmp_path_factory.mktemp("apollo")
    for i in range(APOLLO_IMAGES):
        for rel in apollo_rel(i):
            os.makedirs(os.path.dirname(root / rel), exist_ok=True)
            (root / rel).write_bytes(b"")
    return root


def apollo_rel(i: int) -> tuple[str, str]:
    stem = f"Record001/Camera 5/171206_0257{i:05d}_Camera_5"
    return (
        f"ColorImage_road02/ColorImage/{stem}.jpg",
        f"Labels_road02/Label/{stem}_bin.png",
    )


@st.composite
def apollo_list(draw, labelled: bool):
    """(file bytes, {line: image index}, known bad line numbers)."""
    specs = draw(st.lists(st.sampled_from(["valid", "bad", "random", "blank"]), max_size=10))
    lines, valid, bad = [], {}, set()
    for number, kind in enumerate(specs, start=1):
        i = draw(st.integers(0, APOLLO_IMAGES - 1))
        image, label = apollo_rel(i)
        prefix = draw(st.sampled_from(["", "/home/houyuenan/ApolloScapes/"]))
        flags_ = draw(st.sampled_from(["", " 1 1 1 1", "\t0 0 0 0"]))
        if kind == "valid":
            lines.append(surrogate_free(f"{prefix}{image} {prefix}{label}{flags_}"))
            valid[number] = i
        elif kind == "bad":
            if labelled:
                text = draw(
                    st.sampled_from(
                        [
                            f"{image}",  # no label
                            f"{image} {image}",  # label not a .png
                            f"{image} {label} 1 1",  # 2 flags
                            f"{image} {label} 1 1 1 1 1",  # 5 flags
                            f"{image[:-4]}.txt {label}",  # no image extension
                            f"{image} missing_{i}_bin.png",  # label file does not exist
                        ]
                    )
                )
            else:
                text = draw(st.sampled_from([f"{image[:-4]}.bmp", "no_extension", "x.txt 1"]))
            lines.append(surrogate_free(text))
            bad.add(number)
        elif kind == "random":
            lines.append(draw(random_line))
        else:
            lines.append(draw(blank_line))
    return join_lines(lines, draw(st.sampled_from(NEWLINES)), draw(st.booleans())), valid, bad


def check_apollo_parse(path, root, data, valid, bad, labelled):
    entries, problems = apollo.parse_list(
        path, root, labelled=labelled, root_rewrite=[("/home/houyuenan/ApolloScapes/", "")]
    )
    nonblank = nonblank_numbers(data)
    entry_lines = [e.line for e in entries]
    problem_lines = {p.line for p in problems}
    assert set(entry_lines) | problem_lines == nonblank
    assert not set(entry_lines) & problem_lines
    assert bad <= problem_lines
    assert all(p.path == path or p.kind == "missing_file" for p in problems)
    assert all(encodable(p.format()) for p in problems)
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys))
    for number, i in valid.items():
        image, label = apollo_rel(i)
        earlier = [n for n, j in valid.items() if j == i and n < number]
        if earlier:
            assert number in problem_lines  # a duplicate
            continue
        (entry,) = [e for e in entries if e.line == number]
        assert entry.image_path == os.path.join(str(root), image)
        assert entry.label_path == (os.path.join(str(root), label) if labelled else None)
        assert entry.key == image[: -len(".jpg")]


@fuzz(200)
@given(case=apollo_list(True))
def test_apolloscape_labelled_list(scratch, apollo_root, case):
    data, valid, bad = case
    path = write(scratch, "train.txt", data)
    check_apollo_parse(path, apollo_root, data, valid, bad, True)


@fuzz(150)
@given(case=apollo_list(False))
def test_apolloscape_test_list(scratch, apollo_root, case):
    data, valid, bad = case
    path = write(scratch, "test.txt", data)
    check_apollo_parse(path, apollo_root, data, valid, bad, False)


@fuzz(150)
@given(data=st.binary(max_size=400), labelled=st.booleans(), check_files=st.booleans())
def test_apolloscape_list_random_bytes(scratch, apollo_root, data, labelled, check_files):
    path = write(scratch, "random.txt", data)
    entries, problems = apollo.parse_list(
        path, apollo_root, labelled=labelled, check_files=check_files
    )
    lines = {e.line for e in entries} | {p.line for p in problems}
    assert lines == nonblank_numbers(data)
    assert all(encodable(p.format()) for p in problems)


def test_apolloscape_non_utf8_path_is_reported_printably(scratch, apollo_root):
    # A list line with bytes that are not UTF-8: the entry's file is looked up under those
    # bytes (missing here), and the problem still prints on a UTF-8 terminal.
    path = write(
        scratch, "latin1.txt", b"ColorImage_road02/\xe9t\xe9.jpg Labels_road02/x_bin.png\n"
    )
    entries, problems = apollo.parse_list(path, apollo_root)
    assert entries == [] and {p.kind for p in problems} == {"missing_file"}
    assert all(p.line == 1 and encodable(p.format()) for p in problems)
    assert "\\udce9t\\udce9.jpg" in problems[0].format()
    report = check.CheckReport("apolloscape", {"train": problems}, {"train": 1})
    assert encodable(report.format())


@fuzz(300)
@given(text=token_soup | st.text(max_size=60), labelled=st.booleans())
def test_apolloscape_line_fields(text, labelled):
    text = text.strip()
    assume(text)
    try:
        image, label = apollo._line_fields(text, labelled)
    except apollo._MalformedLine as e:
        assert str(e)
        return
    assert image.lower().endswith((".jpg", ".jpeg", ".png"))
    assert text.startswith(image)
    if labelled:
        assert label.lower().endswith(".png") and label in text
    else:
        assert label is None


# ---------------------------------------------------------------------------------------------
# LLAMAS json labels.


def valid_llamas_label() -> dict:
    """A small label of two lanes (l0 with 3 markers, r0 with 2) that survives the cleaning."""

    def marker(x, z0, z1, y0, y1):
        return {
            "lane_marker_id": f"m{x}{z0}",
            "world_start": {"x": x, "y": 1.5, "z": z0},
            "world_end": {"x": x, "y": 1.5, "z": z1},
            "pixel_start": {"x": 10, "y": y0},
            "pixel_end": {"x": 12, "y": y1},
        }

    return {
        "image_name": "x",
        "projection_matrix": [[100.0, 0.0, 32.0], [0.0, 100.0, 18.0], [0.0, 0.0, 1.0]],
        "lanes": [
            {
                "lane_id": "l0",
                "markers": [
                    marker(-1.0, 5, 6, 40, 30),
                    marker(-1.0, 7, 8, 25, 21),
                    marker(-1, 9, 10, "19", "18"),
                ],
            },
            {"lane_id": "r0", "markers": [marker(1.0, 5, 6, 40, 30), marker(1.0, 7, 8, 25, 20)]},
        ],
    }


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats()  # NaN and +-inf included (json.dumps writes NaN / Infinity)
    | st.sampled_from(NASTY_TOKENS)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["x", "y", "z", "lanes", "markers", "lane_id"]) | st.text(max_size=4),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, (*prefix, i))


@st.composite
def mutated_label(draw):
    """(json bytes, whether the label must still parse)."""
    label = valid_llamas_label()
    paths = list(json_paths(label))
    harmless = True
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = label
        for k in path[:-1]:
            parent = parent[k]
        how = draw(st.sampled_from(["replace", "delete", "extra", "deep"]))
        if not path:
            if how in ("replace", "deep"):
                label = draw(json_values)
                harmless = False
                break
            continue
        key = path[-1]
        try:
            if how == "replace":
                parent[key] = draw(json_values)
                harmless = False
            elif how == "delete":
                del parent[key]
                harmless = False
            elif how == "deep":
                depth = draw(st.integers(1, 400))  # json.dumps itself stops near 1000
                parent[key] = json.loads("[" * depth + "]" * depth)
                harmless = False
            elif isinstance(parent[key], dict):
                parent[key]["extra_" + draw(st.text(max_size=3))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier mutation
        paths = list(json_paths(label)) if isinstance(label, dict | list) else [()]
    text = json.dumps(label)  # NaN / Infinity literals for float specials, as json.dump writes
    return text.encode("utf-8"), harmless


@st.composite
def hostile_json_bytes(draw):
    kind = draw(st.sampled_from(["mutated", "bytes", "deep", "huge_int", "truncated", "encoding"]))
    valid = json.dumps(valid_llamas_label()).encode()
    if kind == "mutated":
        return draw(mutated_label())[0]
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        depth = draw(st.integers(100, 200_000))
        opener = draw(st.sampled_from(["[", '{"a":']))
        return (opener * depth + "1" + ("]" if opener == "[" else "}") * depth).encode()
    if kind == "huge_int":
        digits = draw(st.integers(4000, 6000))
        return valid.replace(b"100.0", b"1" * digits, 1)
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid)))]
    junk = draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\x00", b"\xc3"]))
    at = draw(st.integers(0, len(valid)))
    return valid[:at] + junk + valid[at:]


def check_clean_label(label):
    assert set(label) == {"projection_matrix", "lanes"}
    assert all(math.isfinite(v) for row in label["projection_matrix"] for v in row)
    for lane in label["lanes"]:
        assert re.fullmatch(r"[lr]\d+", lane["lane_id"])
        assert len(lane["markers"]) >= 2
        for marker in lane["markers"]:
            for key in ("pixel_start", "pixel_end"):
                assert all(type(marker[key][c]) is int for c in "xy")
            for key in ("world_start", "world_end"):
                assert all(math.isfinite(marker[key][c]) for c in "xyz")
    multi = llamas_format.render_multiclass_label(label, (24, 40))
    assert multi.dtype == np.uint8 and multi.shape == (24, 40) and multi.max() <= 4
    binary = llamas_format.render_binary_label(label, (24, 40))
    assert binary.dtype == np.uint8 and binary.max() <= 1


def check_llamas_file(path: str) -> bool:
    """read_json and the data check's json checker on one file; True when it parsed."""
    try:
        label = llamas_format.read_json(path)
    except LabelFormatError as e:
        assert str(e).startswith(path + ": "), str(e)
        assert encodable(str(e))
        parsed = False
    else:
        check_clean_label(label)
        parsed = True
    hw, problems = check._llamas_label_checker(20)(path)
    assert hw is None
    # The data check reports a label exactly when the reader rejects it.
    assert bool(problems) == (not parsed)
    for p in problems:
        assert p.path == path and encodable(p.format())
        assert p.line is None or p.line >= 1
    return parsed


@fuzz(300)
@given(data=hostile_json_bytes())
def test_llamas_json_hostile_bytes(scratch, data):
    check_llamas_file(write(scratch, "label.json", data))


@fuzz(250)
@given(case=mutated_label())
def test_llamas_json_mutated_label(scratch, case):
    data, harmless = case
    parsed = check_llamas_file(write(scratch, "label.json", data))
    if harmless:  # only extra keys were added: the label must still be read
        assert parsed


@fuzz(200)
@given(raw=json_values | st.builds(lambda v: {"projection_matrix": v, "lanes": []}, json_values))
def test_llamas_clean_label_python_objects(raw):
    try:
        label = llamas_format.clean_label(raw, source="obj.json")
    except LabelFormatError as e:
        assert str(e).startswith("obj.json: field ")
        return
    check_clean_label(label)


def test_llamas_unreadable_files(scratch):
    with pytest.raises(LabelFormatError, match="nope.json"):
        llamas_format.read_json(os.path.join(str(scratch), "nope.json"))
    with pytest.raises(LabelFormatError, match=re.escape(str(scratch))):
        llamas_format.read_json(str(scratch))  # a folder
    check_llamas_file(write(scratch, "empty.json", b""))


# ---------------------------------------------------------------------------------------------
# .lines.txt readers.

number_token = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["1e400", "-1e400", "1e-400", "0.5e3", ".5", "5.", "+3", "-0"]),
    st.integers(1, 60).map(lambda n: "7" * n),
)
junk_token = st.sampled_from(
    ["x", "nan", "inf", "-", "+", ".", "e5", "1e", "1e+", "\x00", "\ufeff", "1.2.3", "0x1f", "--1"]
)


@st.composite
def lines_txt_bytes(draw):
    """(file bytes, clean) where clean means: every line holds only numbers and spaces."""
    lines, clean = [], True
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["numbers", "glued", "junk", "bytes", "blank"]))
        tokens = draw(st.lists(number_token, max_size=12))
        if kind == "numbers":
            lines.append(" ".join(tokens).encode())
            continue
        clean = False
        if kind == "glued":  # long digit runs and numbers glued to junk (regex backtracking)
            parts = draw(st.lists(number_token | junk_token, max_size=10))
            lines.append("".join(parts).encode("utf-8", "surrogatepass"))
        elif kind == "junk":
            at = draw(st.integers(0, len(tokens)))
            tokens.insert(at, draw(junk_token))
            lines.append(" ".join(tokens).encode("utf-8"))
        elif kind == "bytes":
            lines.append(draw(line_bytes))
        else:
            lines.append(draw(st.sampled_from([b"", b" ", b"\t"])))
            clean = clean and False
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return join_lines(lines, newline, draw(st.booleans())), clean


def expected_culane_lane(line: bytes) -> np.ndarray:
    """What `ss >> x >> y` reads from a line of numbers: pairs until the first overflow."""
    values = []
    for token in line.split():
        value = float(token)
        if math.isinf(value):
            break
        values.append(value)
    pairs = len(values) // 2
    with np.errstate(over="ignore"):
        return np.asarray(values[: 2 * pairs], np.float64).reshape(pairs, 2).astype(np.float32)


@fuzz(300)
@given(case=lines_txt_bytes())
def test_culane_lines_txt_reader(scratch, case):
    data, clean = case
    path = write(scratch, "pred.lines.txt", data)
    lanes = culane_lanes.read_lane_file(path)
    getlines = data.split(b"\n")
    if getlines and getlines[-1] == b"":
        getlines.pop()
    assert len(lanes) == len(getlines)  # every getline line is a lane, blank ones included
    for lane, line in zip(lanes, getlines, strict=True):
        assert lane.dtype == np.float32 and lane.ndim == 2 and lane.shape[1] == 2
        if clean:
            np.testing.assert_array_equal(lane, expected_culane_lane(line))
        assert np.array_equal(culane_lanes.parse_lane_line(line.rstrip(b"\r")), lane, True)


@fuzz(150)
@given(data=st.binary(max_size=400))
def test_culane_lines_txt_random_bytes(scratch, data):
    lanes = culane_lanes.read_lane_file(write(scratch, "random.lines.txt", data))
    assert all(lane.dtype == np.float32 and lane.shape[1:] == (2,) for lane in lanes)


def test_culane_lines_txt_digit_run_is_fast(scratch):
    # 30 digits and a letter took minutes (nested quantifiers in the line regex backtracked
    # through every split of the digit run); the official reader stops at the letter.
    line = b"1" * 30 + b"x"
    assert culane_lanes.parse_lane_line(line).shape == (0, 2)
    assert culane_lanes.parse_lane_line(b"1 2 3 4 " + line).tolist() == [[1, 2], [3, 4]]
    assert culane_lanes.read_lane_file(write(scratch, "run.lines.txt", line * 3))[0].shape == (
        0,
        2,
    )
    assert culane_lanes.read_lane_file(os.path.join(str(scratch), "none.lines.txt")) is None


@fuzz(300)
@given(case=lines_txt_bytes())
def test_llamas_lines_txt_reader(scratch, case):
    data, clean = case
    path = write(scratch, "pred.lines.txt", data)
    try:
        lanes = llamas_lanes.read_lines_txt(path)
    except LabelFormatError as e:
        assert not clean or "even number" in str(e) or "finite" in str(e)
        m = re.match(re.escape(path) + r"(?::(\d+))?: ", str(e))
        assert m, str(e)
        if m.group(1):
            assert 1 <= int(m.group(1)) <= max(1, len(oracle_lines(data)))
        return
    for lane in lanes:
        assert lane.dtype == np.float64 and lane.shape[0] >= 2 and lane.shape[1] == 2
        assert np.all(np.isfinite(lane))
    if clean:
        expected = []
        for line in oracle_lines(data):
            values = [float(t) for t in line.split()]
            if len(values) >= 4:
                expected.append(np.asarray(values).reshape(-1, 2))
        assert len(lanes) == len(expected)
        for got, want in zip(lanes, expected, strict=True):
            np.testing.assert_array_equal(got, want)


@fuzz(150)
@given(data=st.binary(max_size=400))
def test_llamas_lines_txt_random_bytes(scratch, data):
    path = write(scratch, "random.lines.txt", data)
    try:
        lanes = llamas_lanes.read_lines_txt(path)
    except LabelFormatError as e:
        assert str(e).startswith(path + ":")
        return
    assert all(lane.shape[0] >= 2 and np.all(np.isfinite(lane)) for lane in lanes)


# ---------------------------------------------------------------------------------------------
# Config files, variants and --config.x=y overrides.

CONFIG_FILES = ("configs/llamas.py", "configs/culane.py", "configs/apolloscape.py")
_VALUE_ATOMS = [
    "0",
    "1",
    "-1",
    "3",
    "64",
    "1.5",
    "-0.0",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "999999999999999999999999",
    "True",
    "None",
    "''",
    "'abc'",
    "'float32'",
    "'erfnet'",
    "'\\x00'",
    "abc",
    "(",
    ")",
    "[",
    "{1: 2}",
]
override_value = st.one_of(
    st.sampled_from(_VALUE_ATOMS),
    st.lists(st.sampled_from(_VALUE_ATOMS[:17]), max_size=4).map(
        lambda items: "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    ),
    st.lists(st.sampled_from(_VALUE_ATOMS[:17]), max_size=3).map(
        lambda items: "((" + ", ".join(items) + "), 'x')"
    ),
    st.text(alphabet=string.printable, max_size=12),
    st.integers().map(str),
    st.floats().map(repr),
)
# Fields with a value that check_config (or the data reader it builds) validates.
OVERRIDE_FIELDS = (
    "dtype",
    "batch_size",
    "data.name",
    "data.image_hw",
    "data.crop_top",
    "data.mean_rgb",
    "data.std_rgb",
    "data.class_weights",
    "data.num_parallel_calls",
    "data.prefetch",
    "data.skip_corrupt",
    "data.source",
    "data.train_split",
    "data.eval_split",
    "data.max_examples.train",
    "data.augment.scale_range",
    "data.augment.rotation_deg",
    "data.augment.brightness",
    "teacher.model",
    "teacher.model_kwargs.depth",
    "teacher.model_kwargs.bins",
    "teacher.model_kwargs.dropout_rate",
    "student.model",
    "student.model_kwargs.erfnet.channels",
    "student.model_kwargs.erfnet.num_stage1_blocks",
    "student.model_kwargs.erfnet.stage2_dropout",
)
DATASET_FIELDS = {
    "configs/llamas.py": ("data.label_type", "data.cache_dir"),
    "configs/culane.py": (
        "data.root_rewrite",
        "data.augment.rotation_prob",
        "data.augment.scale_of",
    ),
    "configs/apolloscape.py": (
        "data.root_rewrite",
        "data.split_source",
        "data.teacher_image_hw",
        "data.augment.rotation_prob",
    ),
}


def assert_names_a_field(error: Exception, fields: list[str]) -> None:
    """The message names one of the changed fields (the base config itself is valid)."""
    names = {f.rsplit(".", 1)[-1] for f in fields}
    assert any(name in str(error) for name in names), (fields, str(error))


def load_config(argv: list[str]):
    """``--config`` and its overrides parsed exactly as main.py's flag does."""
    argv = ["main.py", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


@st.composite
def config_overrides(draw):
    file = draw(st.sampled_from(CONFIG_FILES))
    fields = draw(
        st.lists(
            st.sampled_from(OVERRIDE_FIELDS + DATASET_FIELDS[file]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    # mode=export reads no data folder (need_files=False): the fields' checks are what runs,
    # and nothing is generated (other modes would write the synthetic twin into data/).
    argv = [f"--config={file}:smoke", "--config.mode=export"]
    argv += [f"--config.{field}={draw(override_value)}" for field in fields]
    return argv


@pytest.fixture(scope="module")
def in_repo_root():
    old = os.getcwd()
    os.chdir(ROOT)  # config files import `configs` and name relative data dirs
    yield
    os.chdir(old)


# ml_collections loads config files with the deprecated importlib load_module.
LOAD_MODULE_WARNING = "ignore:the load_module:DeprecationWarning"


@pytest.mark.filterwarnings(LOAD_MODULE_WARNING)
@fuzz(200)
@given(argv=config_overrides())
def test_config_overrides_accept_or_name_the_field(in_repo_root, argv):
    try:
        config = load_config(argv)
    except flags.Error as e:
        # absl's flag error: main.py's app.run prints it as a usage error naming the flag.
        assert "--config" in str(e)
        event("rejected by the flag parser")
        return
    try:
        building.check_config(config)
    except (ConfigError, DataError) as e:
        event(f"check_config: {type(e).__name__}")
        assert_names_a_field(e, [a.split("=", 1)[0][len("--config.") :] for a in argv[2:]])
    else:
        event("accepted")


@pytest.mark.filterwarnings(LOAD_MODULE_WARNING)
@fuzz(60)
@given(
    file=st.sampled_from(CONFIG_FILES),
    variant=st.sampled_from(["", "smoke", "synthetic", "Smoke", " smoke", "x", ":", "\x00"])
    | st.text(max_size=8),
)
def test_config_variants(in_repo_root, file, variant):
    try:
        config = load_config([f"--config={file}:{variant}" if variant else f"--config={file}"])
    except flags.Error as e:
        # An unknown variant: ValueError of configs/default.apply_variant, listing the known
        # ones, wrapped by the flag parser into its error.
        assert variant not in ("", "smoke", "synthetic")
        assert "unknown variant" in str(e), str(e)
        return
    assert variant in ("", "smoke", "synthetic")
    assert config.data.name in file


python_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2, 64, 10**30, -(10**30)])
    | st.floats()
    | st.sampled_from(["", "abc", "float32", "bfloat16", "erfnet", "pspnet", "files", "\x00"])
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4).map(tuple) | st.lists(children, max_size=3),
    max_leaves=8,
)


def set_field(config, dotted: str, value) -> None:
    """Sets a field past ml_collections' type check: what a notebook's dict or a JSON file gives."""
    *parents, name = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    with node.ignore_type():
        node[name] = value


@pytest.mark.filterwarnings(LOAD_MODULE_WARNING)
@fuzz(200)
@given(
    file=st.sampled_from(CONFIG_FILES),
    data=st.data(),
)
def test_config_field_values_accept_or_name_the_field(in_repo_root, file, data):
    config = load_config([f"--config={file}:smoke", "--config.mode=export"])
    fields = data.draw(
        st.lists(
            st.sampled_from(OVERRIDE_FIELDS + DATASET_FIELDS[file]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    for field in fields:
        set_field(config, field, data.draw(python_value, label=field))
    try:
        building.check_config(config)
    except (ConfigError, DataError) as e:
        event(f"check_config: {type(e).__name__}")
        assert_names_a_field(e, fields)
    else:
        event("accepted")
