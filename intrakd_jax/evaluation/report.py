"""Small report writers: Markdown tables and a <name>.json + <name>.md pair per evaluation."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines.util import write_file_atomic

MISSING = "n/a"  # How nan/None cells appear in Markdown tables.


def to_jsonable(obj: Any) -> Any:
    """Recursively converts results to plain JSON types; nan and +-inf become None.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, mapping keys
    become strings.

    Args:
      obj: nested dicts/lists/tuples of numbers, strings, bools, None and numpy values.

    Returns:
      An object that `json.dumps(..., allow_nan=False)` accepts.

    Raises:
      TypeError: for values of any other type (named with their path).
    """
    return _to_jsonable(obj, "results")


def _to_jsonable(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist(), where)
    if isinstance(obj, np.generic):
        return _to_jsonable(obj.item(), where)
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"to_jsonable: {where} has unsupported type {type(obj).__name__}")


def _format_cell(value: Any, float_fmt: str) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return float_fmt.format(value)
    # "|" would end the cell and a newline the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_fmt: str = "{:.4f}"
) -> str:
    """Renders rows as a GitHub Markdown table.

    Floats use `float_fmt`; nan and None show as "n/a"; other values use `str`.

    Args:
      rows: one mapping per table row; every mapping must hold every column.
      columns: column keys, in order; also the header.
      float_fmt: `str.format` pattern for floats.

    Returns:
      The table, one line per row, with a trailing newline.

    Raises:
      ValueError: if `columns` is empty or a row lacks a column.
    """
    if not columns:
        raise ValueError("markdown_table: columns must not be empty")
    lines = [
        "| " + " | ".join(_format_cell(c, float_fmt) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"markdown_table: row {i} lacks columns {missing}; has {list(row)}")
        lines.append("| " + " | ".join(_format_cell(row[c], float_fmt) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike[str],
    name: str,
    results: Mapping[str, Any],
    tables: Mapping[str, str],
) -> None:
    """Writes `<out_dir>/<name>.json` (results, nan -> null) and `<out_dir>/<name>.md`.

    The Markdown file is a `# <name>` heading followed by one `## <title>` section per table,
    in the order of `tables`.

    Args:
      out_dir: directory, created if missing.
      name: file stem without directory separators.
      results: JSON-like results (see `to_jsonable`).
      tables: title -> Markdown text (e.g. from `markdown_table`).

    Raises:
      ValueError: if `name` is empty or contains a path separator.
      TypeError: if `results` holds a value JSON cannot represent.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"write_report: name must be a plain file stem, got {name!r}")
    write_json(os.path.join(out_dir, f"{name}.json"), results)
    parts = [f"# {name}\n"]
    for title, table in tables.items():
        parts.append(f"\n## {title}\n\n{table.rstrip()}\n")
    write_file_atomic(os.path.join(out_dir, f"{name}.md"), "".join(parts).encode("utf-8"))


def write_json(path: str | os.PathLike[str], results: Any) -> None:
    """Writes ``results`` (see ``to_jsonable``) as indented JSON, atomically.

    Raises:
      TypeError: if ``results`` holds a value JSON cannot represent.
    """
    payload = json.dumps(to_jsonable(results), indent=2, sort_keys=False, allow_nan=False)
    write_file_atomic(os.fspath(path), (payload + "\n").encode("utf-8"))
