"""List files and dataset problems: the one list-parser shape of CULane and ApolloScape.

Both datasets' list parsers (``formats.culane.parse_list``, ``formats.apolloscape.parse_list``)
are built from the pieces here and return ``(entries, problems)``, each entry carrying its
1-based list line:

* ``read_list_lines`` gives the non-blank lines of a list with their numbers;
* ``rewrite_prefix`` maps absolute paths written on another machine with
  ``config.data.root_rewrite`` (read by ``normalize_root_rewrite``);
* a ``ProblemLog`` takes every problem as a ``Problem`` naming the file and line: it raises the
  first one (strict reading, before training) or collects them all (the data check,
  ``data_pipelines.check``, which reports the same records).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from data_pipelines.errors import DataConfigError, DatasetLayoutError

# kind -> what it means (the data check report's legend).
KINDS: dict[str, str] = {
    "missing_file": "a file the lists or the folder layout reference does not exist",
    "unreadable_image": "an image or label file that does not decode fully",
    "label_value": "label values outside the class table",
    "size_mismatch": "an image and its label differ in size",
    "malformed_line": "a list line (or json text) that does not parse",
    "malformed_label": "a label annotation that parses but lacks or mistypes fields",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a dataset.

    Attributes:
        kind: one of ``KINDS``.
        path: the file at fault (for a missing file: the path that was expected).
        line: 1-based line number in ``path`` where applicable, else None.
        message: what is wrong and what was expected.
        blocking: False for a problem the data check reports but that does not stop a reader
            (e.g. an ApolloScape label without its image).
    """

    kind: str
    path: str
    line: int | None
    message: str
    blocking: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Problem.kind must be one of {list(KINDS)}, got {self.kind!r}")

    @property
    def where(self) -> str:
        """``path:line`` (``path`` when there is no line)."""
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def format(self) -> str:
        """``path:line: [kind] message`` (no ``:line`` when there is none).

        Printable on any UTF-8 stream: bytes of a list that are not UTF-8 travel in paths as
        surrogate escapes (so the file can still be found on disk), and are shown here as
        backslash escapes instead of failing ``print`` or the report file's write.
        """
        text = f"{self.where}: [{self.kind}] {self.message}"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ProblemLog:
    """Where a list parser reports problems: raised at once (strict) or collected.

    Attributes:
        strict: raise ``DatasetLayoutError("<path>[:<line>]: <message>")`` at the first blocking
            problem instead of collecting it.
        problems: the problems collected so far.
    """

    def __init__(self, strict: bool = False):
        """Starts an empty log."""
        self.strict = strict
        self.problems: list[Problem] = []

    def add(
        self, kind: str, path: str, line: int | None, message: str, *, blocking: bool = True
    ) -> None:
        """Reports one problem (see ``Problem`` for the fields).

        Raises:
            DatasetLayoutError: strict log and a blocking problem.
        """
        problem = Problem(kind, path, line, message, blocking)
        if self.strict and blocking:
            raise DatasetLayoutError(f"{problem.where}: {message}")
        self.problems.append(problem)


def read_list_lines(list_path: str, log: ProblemLog, expected: str) -> list[tuple[int, str]]:
    """The non-blank lines of a list file with their 1-based line numbers.

    Bytes that are not UTF-8 are kept as surrogate escapes, so such a path is reported as a
    missing file at its line rather than failing the whole list.

    Args:
        list_path: the list file.
        log: receives a ``missing_file`` problem when the file cannot be read.
        expected: the line format, quoted in the message of a missing list.

    Returns:
        ``(line number, line)`` pairs; empty when the file cannot be read.
    """
    try:
        with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        log.add("missing_file", list_path, None, f"list file does not exist (expected {expected})")
        return []
    except OSError as e:
        log.add("missing_file", list_path, None, f"cannot read list file ({e})")
        return []
    # Universal newlines have turned '\r\n' and '\r' into '\n'; split there only, because
    # str.splitlines also breaks at form feeds, '\x1c'-'\x1e', '\x85' and U+2028, which would
    # shift every later line number away from what an editor (and the user) sees.
    lines = enumerate(text.split("\n"), start=1)
    return [(number, line) for number, line in lines if line.strip()]


def normalize_root_rewrite(value) -> tuple[tuple[str, str], ...]:
    """``config.data.root_rewrite`` -> tuple of ``(old_prefix, new_prefix)`` pairs.

    List files written on another machine hold absolute paths; a path starting with
    ``old_prefix`` gets ``new_prefix`` instead. Accepts None/empty, one pair, or a sequence of
    pairs.

    Raises:
        DataConfigError: anything else.
    """
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return ()
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, str) for v in value):
        value = (value,)
    pairs = []
    for pair in value if isinstance(value, Sequence) and not isinstance(value, str) else [value]:
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or not all(isinstance(v, str) for v in pair)
            or not pair[0]
        ):
            raise DataConfigError(
                "config.data.root_rewrite must be (old_prefix, new_prefix) or a sequence of such "
                f"string pairs with a non-empty old_prefix, got {value!r}"
            )
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def rewrite_prefix(path: str, pairs: Iterable[Sequence[str]]) -> str:
    """``path`` with the first matching ``old_prefix`` replaced by its ``new_prefix``.

    Args:
        path: a path as written in a list.
        pairs: ``(old_prefix, new_prefix)`` pairs; an empty ``old_prefix`` never matches.

    Returns:
        The rewritten path (``path`` itself when no prefix matches).
    """
    for old, new in pairs:
        if old and path.startswith(old):
            return new + path[len(old) :]
    return path
