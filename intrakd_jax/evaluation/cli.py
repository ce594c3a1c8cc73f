"""What the metric command lines share: common flags, input checks, exit statuses, JSON output.

``python -m intrakd_jax.evaluation.{culane,llamas,llamas_lanes,apolloscape}``: each module ends
with a thin ``main(argv)`` that parses its flags and calls its library function through `run`:

* ``--workers N`` processes score the images (default: all cores), with progress and ETA on
  stderr (`evaluation.pool.map_images`);
* ``--output FILE.json`` writes the result (nan as null);
* usage errors (bad flags, a missing input folder or list file) give status 2 after the usage
  line, as argparse does; unreadable or malformed input files give status 1 and one ``error:``
  line that names the file (and the line, where there is one). ``main`` returns the status
  instead of exiting, so it can be called in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from intrakd_jax.evaluation import report


class UsageError(Exception):
    """A command-line mistake found after parsing, e.g. a missing input folder (exit status 2)."""


def new_parser(module: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--workers`` and ``--output`` for ``python -m <module>``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument(
        "--workers", "-j", type=int, default=None, help="processes (default: all CPU cores)"
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE.json", help="also write the result as JSON"
    )
    return parser


def require_dir(path: str, flag: str) -> str:
    """``path`` if it is a folder, else `UsageError` naming the flag."""
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is not a folder")
    return path


def require_file(path: str, flag: str) -> str:
    """``path`` if it is a file, else `UsageError` naming the flag."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r} is not a file")
    return path


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """Parses ``argv``, runs ``body(args)`` and writes ``--output``; returns the exit status.

    Args:
      parser: from `new_parser`, with the module's own flags added.
      argv: command-line arguments (None: ``sys.argv[1:]``).
      body: checks its inputs (raising `UsageError`), computes, prints the result and returns it.

    Returns:
      0 on success (and for ``--help``); 2 on usage errors (argparse's own, printed by argparse,
      and `UsageError`, printed the same way); 1 when an input file is missing or malformed
      (an ``error:`` line on stderr naming the file).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the help or the usage error already
        return e.code if isinstance(e.code, int) else 2
    logging.set_verbosity(logging.INFO)  # progress lines
    try:
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
        result = body(args)
        if args.output:
            report.write_json(os.path.abspath(args.output), result)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
