"""What a benchmark module is, and the parts of one that every module shares.

A benchmark is a module ``bench.NAME`` of this package. It runs alone (``python -m bench.NAME
--help``), and bench/report.py runs it as its own process, ``python -m bench.NAME --json
bench/out/NAME.json`` with ``--quick`` or the arguments of a full run (and ``--dsn URL``),
then imports it to turn that JSON into its section of docs/benchmarks.md: :class:`Benchmark`
is that contract, and :func:`load` imports a module checked against it.

The parts every module shares:

* :class:`Parser`, the command line: the module's docstring as its help, ``--quick``, ``--runs``
  (unless the module repeats no whole runs), ``--dsn`` and ``--json`` already there;
  ``set_quick_defaults`` for what ``--quick`` changes (an option given on the command line
  keeps its value), ``add_list`` for a comma-separated option, ``add_quiet`` for the
  quiet-machine wait.
* :func:`finish`, the end of ``main()``: the JSON document (``benchmark``, ``command``,
  ``params``, ``machine``, the module's own keys, ``results``), its report printed, the file
  written.
* :func:`pyplot` and :func:`save` for the plots.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: A benchmark's JSON document, as :func:`finish` writes it.
Data = dict[str, Any]
#: A row of the targets table of docs/benchmarks.md: (what, target, measured, met).
Target = tuple[str, str, str, bool]


@runtime_checkable
class Benchmark(Protocol):
    """A benchmark module as bench/report.py uses it (the module object is the instance)."""

    def main(self, argv: list[str] | None = None) -> None:
        """Run the benchmark (``argv``: its command line, default ``sys.argv[1:]``); with
        ``--json FILE``, write all its measurements there (:func:`finish`)."""

    def markdown(self, data: Data) -> str:
        """Its section of docs/benchmarks.md, below the title and the command."""

    def plots(self, data: Data, outdir: Path) -> list[Path]:
        """Write its plots into ``outdir``; their paths, in the order they are shown."""

    def targets(self, data: Data) -> list[Target]:
        """Its rows of the targets table (an empty list when it has no target)."""


def load(name: str) -> Benchmark:
    """``bench.NAME``, checked to be a benchmark module."""
    module = importlib.import_module(f"bench.{name}")
    if not isinstance(module, Benchmark):
        missing = [
            attr
            for attr in ("main", "markdown", "plots", "targets")
            if not callable(getattr(module, attr, None))
        ]
        raise TypeError(f"bench.{name} is not a benchmark module: no {', '.join(missing)}")
    return module


# --------------------------------------------------------------------------- command line

_NOT_GIVEN = object()


class Parser(argparse.ArgumentParser):
    """The command line of ``python -m bench.NAME``.

    ``quick`` says what ``--quick`` does (its help); ``runs`` is the default of ``--runs``
    (``None``: no such option). :meth:`parse` also sets ``args.benchmark`` (NAME) and
    ``args.command`` (the command line, for the JSON).
    """

    def __init__(self, name: str, doc: str | None, quick: str, runs: int | None = 3) -> None:
        super().__init__(
            prog=f"python -m bench.{name}",
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.name = name
        self.quick_defaults: dict[str, Any] = {}
        self.add_argument("--quick", action="store_true", help=f"smoke check: {quick}")
        if runs is not None:
            self.add_argument(
                "--runs",
                type=int,
                default=runs,
                help=f"runs; medians are reported ({runs}; --quick 1)",
            )
            self.set_quick_defaults(runs=1)
        self.add_argument("--dsn", help="benchmark this database instead of a private server")
        self.add_argument("--json", type=Path, help="also write all measurements to this file")

    def set_quick_defaults(self, **values: Any) -> None:
        """Defaults under ``--quick`` (by destination), like ``set_defaults``: a string is
        converted by the option's ``type``, as argparse does with a default."""
        self.quick_defaults.update(values)

    def add_list(
        self,
        flag: str,
        dest: str,
        default: str | None,
        help: str,
        item: Callable[[str], Any] = str,
        choices: Sequence[Any] | None = None,
    ) -> None:
        """A comma-separated option: ``args.<dest>`` is the list of its (non-empty) items, each
        converted by ``item`` and, with ``choices``, one of them."""
        name = flag.lstrip("-")
        what = name.removesuffix("s")

        def parse(text: str) -> list[Any]:
            items = [item(x.strip()) for x in text.split(",") if x.strip()]
            for x in items:
                if choices is not None and x not in choices:
                    known = ", ".join(str(c) for c in choices)
                    raise argparse.ArgumentTypeError(f"unknown {what} {x!r}; choose from {known}")
            return items

        parse.__name__ = f"{getattr(item, '__name__', 'item')} list"  # argparse's error names it
        self.add_argument(
            flag, dest=dest, metavar=name.upper(), type=parse, default=default, help=help
        )

    def add_quiet(self, wait: float = 10.0) -> None:
        """``--quiet-cores`` and ``--quiet-wait``: see common.wait_quiet."""
        self.add_argument(
            "--quiet-cores",
            type=float,
            default=0.4,
            help="before each measurement wait (up to --quiet-wait s) until the idle machine "
            "uses less than this many cores (0.4); 0 disables",
        )
        self.add_argument(
            "--quiet-wait", type=float, default=wait, help=f"see --quiet-cores ({wait:g})"
        )

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        normal = {dest: self.get_default(dest) for dest in self.quick_defaults}
        self.set_defaults(**dict.fromkeys(self.quick_defaults, _NOT_GIVEN))
        try:
            args = self.parse_args(argv)
        finally:
            self.set_defaults(**normal)
        for dest, quick in self.quick_defaults.items():
            if getattr(args, dest) is _NOT_GIVEN:
                value = quick if args.quick else normal[dest]
                action = next(a for a in self._actions if a.dest == dest)
                if isinstance(value, str) and callable(action.type):
                    value = action.type(value)
                setattr(args, dest, value)
        args.benchmark = self.name
        args.command = f"{self.prog} " + " ".join(sys.argv[1:] if argv is None else argv)
        return args


# --------------------------------------------------------------------------- the end of main()


def finish(
    args: argparse.Namespace,
    params: dict[str, Any],
    machine: list[str],
    results: Any,
    text: Callable[[Data], str] | None = None,
    **extra: Any,
) -> Data:
    """A benchmark's JSON document; its report (``text``) printed; written to ``--json``."""
    data: Data = {
        "benchmark": args.benchmark,
        "command": args.command,
        "params": params,
        "machine": machine,
        **extra,
        "results": results,
    }
    if text is not None:
        print()
        print(text(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
        print(f"== all measurements written to {args.json}")
    return data


# --------------------------------------------------------------------------- the document


def pyplot() -> Any:
    """matplotlib.pyplot without a display (imported only when a plot is made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` (laid out, at the document's resolution) to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
