"""The ``ndtracker`` command: ``report``, ``demo`` and ``compare``.

``main(argv) -> int`` never raises and never prints a traceback for a problem with its input: it
prints one line, ``ndtracker: error: ...``, on stderr and returns 2 for a usage mistake (bad or
missing arguments) or 1 for anything else (missing run, no rows yet, newer schema, a layer pattern
that matches nothing, a metric that was not computed). Warnings (a damaged Parquet part that was
skipped) are printed as ``ndtracker: warning: ...`` lines and do not change the exit code.

The ``report`` and ``compare`` paths never import torch; ``demo`` imports it when it runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

from ndtracker.errors import NdtrackerError
from ndtracker.version import __version__
from ndtracker.vocabulary import METRICS, SPACES

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ndtracker.reports import Comparison, Report


EXAMPLES = """examples:
  ndtracker demo --out runs/demo
  ndtracker report runs/demo --html report.html
  ndtracker report runs/exp1 --metric effective_rank --layers 'blocks.*'
  ndtracker compare runs/exp1 runs/exp2 --html compare.html
"""


class UsageError(Exception):
    """A mistake in the command line itself (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ndtracker`` command line.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on an error with the run or its logs, 2 on a usage error.
    """
    try:
        args = build_parser().parse_args(argv)
        with _warnings_to_stderr():
            return args.handler(args)
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else 0
    except UsageError as error:
        return _fail(str(error), 2)
    except (NdtrackerError, ValueError, OSError) as error:
        return _fail(str(error), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``ndtracker`` command.

    Returns:
        The parser; each verb's namespace carries its ``handler``.
    """
    parser = _Parser(
        prog="ndtracker", description="Phase reports of ndtracker runs, and a demo.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"ndtracker {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    _add_report(verbs.add_parser("report", help="summarise a run in the terminal, optionally HTML"))
    _add_demo(verbs.add_parser("demo", help="train a small tracked model and report on it"))
    _add_compare(verbs.add_parser("compare", help="overlay one metric of two runs"))
    return parser


def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory (holds run.json)")
    parser.add_argument("--run-id", help="which run of the directory (default: the latest)")
    parser.add_argument("--rank", type=_rank, metavar="R",
                        help="a distributed run written by every rank: whose rows (default: 0)")  # fmt: skip
    _add_common(parser)
    parser.set_defaults(handler=_report)


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="first run directory")
    parser.add_argument("run_b", metavar="RUN_B", help="second run directory")
    parser.add_argument("--run-id-a", help="which run of RUN_A (default: the latest)")
    parser.add_argument("--run-id-b", help="which run of RUN_B (default: the latest)")
    _add_common(parser)
    parser.set_defaults(handler=_compare)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument("--metric", default="stable_rank", choices=METRICS,
                        help="default: %(default)s")  # fmt: skip
    parser.add_argument("--layers", metavar="PATTERN",
                        help="glob over layer names, e.g. 'blocks.*'")  # fmt: skip
    parser.add_argument("--space", choices=SPACES, help="one space only (default: both)")
    parser.add_argument("--width", type=_positive, metavar="N", help="terminal width in columns")
    parser.add_argument("--workers", type=_positive, metavar="N",
                        help="detection processes for large runs (default: 1 per core, <= 8)")  # fmt: skip


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the run")
    parser.add_argument("--steps", type=_positive, default=None, metavar="N",
                        help="training steps (default: the demo's own)")  # fmt: skip
    parser.add_argument("--width", type=_positive, metavar="N", help="terminal width in columns")
    parser.set_defaults(handler=_demo)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rank(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a rank (an integer >= 0), got {text!r}")
    return value


def _report(args: argparse.Namespace) -> int:
    from ndtracker import reports

    rep = reports.report(
        args.run, run_id=args.run_id, metric=args.metric, layers=args.layers,
        space=args.space, progress=True, workers=args.workers, rank=args.rank,
    )  # fmt: skip
    return _show(rep, args)


def _compare(args: argparse.Namespace) -> int:
    from ndtracker import reports

    comparison = reports.compare(
        args.run_a, args.run_b, metric=args.metric, layers=args.layers, space=args.space,
        run_id_a=args.run_id_a, run_id_b=args.run_id_b, progress=True, workers=args.workers,
    )  # fmt: skip
    return _show(comparison, args)


def _show(result: Report | Comparison, args: argparse.Namespace) -> int:
    console = _console(args.width)
    console.print(result)
    if args.html:
        result.to_html(args.html, progress=True)
        console.print(f"HTML report: {_shown(args.html)}", markup=False, highlight=False)
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from ndtracker import demo
    except ImportError as error:  # torch missing: reports work without it, the demo does not
        raise NdtrackerError(f"the demo trains a PyTorch model: install torch ({error})") from None
    return demo.main(args.out, steps=args.steps, console=_console(args.width))


def _console(width: int | None) -> Console:
    from rich.console import Console

    return Console(width=width) if width else Console()


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Print each warning once, as one ``ndtracker: warning:`` line instead of Python's format."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).removeprefix("ndtracker: ").split())
        if text not in shown:  # the same file warned about by two reads of one command
            shown.add(text)
            print(f"ndtracker: warning: {_shown(text)}", file=sys.stderr)

    with warnings.catch_warnings():  # restores showwarning and the filters on exit
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _fail(message: str, code: int) -> int:
    text = " ".join(message.split()) or "unknown error"
    print(f"ndtracker: error: {_shown(text)}", file=sys.stderr)
    return code


def _shown(text: str) -> str:
    """``text`` safe for a terminal: control characters and undecodable bytes as visible escapes."""
    from ndtracker.reports.text import literal

    return literal(text)
