"""``python -m generator``: list cases, write the zoo, verify it, run benchmarks.

Bad input (unknown case, tampered zoo file, bad option) prints one line on stderr
and exits with status 2; verification failures exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from generator.errors import UsageError

PROG = "python -m generator"


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and go through UsageError."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def path_argument(text: str) -> Path:
    """A path argument, refused in one line when no file system could hold it."""
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte; give a path without one")
    long = next((part for part in Path(text).parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        raise argparse.ArgumentTypeError(
            f"the name {long[:40]!r}… is {len(os.fsencode(long))} bytes; a file name has at most 255"
        )
    return Path(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= threading.TIMEOUT_MAX:  # a longer wait overflows the platform's time_t
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, {threading.TIMEOUT_MAX:.3g}]")
    return value


def tolerant_output() -> None:
    """Characters the terminal's encoding lacks (PYTHONIOENCODING=ascii) are escaped, not fatal."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def stdout_closed(prog: str) -> int:
    """The reader of stdout went away (``| head -c1``): stop writing to it, say so once, exit 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    except (OSError, ValueError, io.UnsupportedOperation):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaced for the rest of the process
    print(f"{prog}: stdout was closed before the output ended (broken pipe); stopped", file=sys.stderr)
    return 1


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def cmd_list(args: argparse.Namespace) -> int:
    from generator.registry import select

    for spec in select(args.cases):
        print(f"{spec.id:55s} {spec.description}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from generator import zoo
    from generator.registry import select

    console = _console()
    specs = select(args.cases)
    out = Path(args.out)

    def progress(spec, built) -> None:
        size = sum(len(b) for b in built.files.values())
        console.print(f"[green]wrote[/] {spec.id:50s} {len(built.files):3d} files {size / 1024:8.1f} KiB")

    from generator.registry import topics

    whole_topics = [pattern for pattern in args.cases if pattern in topics()]
    zoo.write(specs, out, prune=not args.cases, prune_topics=whole_topics, progress=progress)
    console.print(f"[bold]{len(specs)} cases[/] → {out / zoo.MANIFEST_NAME}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from generator import baseline, runtimes, verify

    console = _console()
    chosen = runtimes.available(args.runtime)
    marks = {
        "pass": "[green]pass[/]",
        "mismatch": "[red]mismatch[/]",
        "error": "[red]error[/]",
        "unsupported": "[yellow]unsupported[/]",
    }

    def progress(case_id: str, runtime: str, cell) -> None:
        err = f" {cell.max_abs_err:.2g}" if cell.max_abs_err is not None else ""
        note = f" (known: {cell.known_divergence})" if cell.known_divergence else ""
        detail = f" {cell.detail}" if cell.status != "pass" else ""
        console.print(f"{case_id:50s} {runtime:12s} {marks[cell.status]}{err}{note}{detail}"[:400])

    zoo_dir, baseline_path = Path(args.zoo), Path(args.baseline)
    expected = baseline.load(baseline_path)
    verify.check_output(Path(args.json), zoo_dir)
    # The project's own zoo reuses cells whose runtime, adapter and bytes have not changed.
    own_zoo = zoo_dir.resolve() == verify.ZOO.resolve()
    cache = verify.CellCache() if own_zoo and not args.no_cache else None
    matrix = verify.verify(chosen, args.cases, zoo_dir, progress, cache=cache, timeout=args.cell_timeout)
    path = verify.write_matrix(matrix, Path(args.json), zoo_dir)
    full = not args.cases
    for line in matrix["skipped"].values():
        console.print(f"[yellow]note[/] {line}")
    if args.record:
        data, changed = baseline.recorded(matrix, expected, full=full)
        for line in changed:
            console.print(f"[yellow]recorded[/] {line.split('; ')[0]}")
        console.print(f"{len(changed)} cells changed → {baseline.save(data, baseline_path)}")
        return 0
    problems = verify.failures(matrix, expected, full=full)
    for line in problems:
        console.print(f"[red]FAIL[/] {line}")
    ran = [rt["name"] for rt in matrix["runtimes"]]
    for name in (name for name in ran if name not in expected["runtimes"]):
        console.print(f"[yellow]note[/] {name} has no baseline; record its column with `{baseline.record_command()}`")
    console.print(f"{len(matrix['cases'])} cases × {len(ran)} runtimes → {path}")
    return 1 if problems else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from generator.registry import topics

    names = args.topics or topics()
    for topic in names:
        if topic not in topics():
            raise UsageError(f"unknown topic {topic!r}; valid: {', '.join(topics())}")
        try:
            module = importlib.import_module(f"proposals.{topic}.bench")
        except ModuleNotFoundError as err:
            if err.name != f"proposals.{topic}.bench" or args.topics:
                raise UsageError(f"topic {topic!r} has no bench.py") from None
            continue
        print(f"== bench {topic}{' (quick)' if args.quick else ''}", flush=True)
        module.main(quick=args.quick)
    return 0


def cmd_new_proposal(args: argparse.Namespace) -> int:
    from generator.scaffold import ROOT, new_proposal

    for path in new_proposal(args.name):
        print(f"created {path.relative_to(ROOT)}")
    print(f"added proposals/{args.name}/README.md to mkdocs.yml and its example case to zoo/")
    return 0


def cmd_snippets(args: argparse.Namespace) -> int:
    from generator.snippets import ROOT, export_all

    for path in export_all(site_url=args.site_url):
        print(f"exported {path.relative_to(ROOT)}")
    return 0


def parser() -> argparse.ArgumentParser:
    from generator.baseline import BASELINE
    from generator.verify import CELL_TIMEOUT, MATRIX_JSON
    from generator.zoo import ZOO

    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list the registered zoo cases")
    ls.add_argument("cases", nargs="*", help="topic, case or topic/case")
    ls.set_defaults(run=cmd_list)

    z = sub.add_parser("zoo", help="build cases and write them to the zoo")
    z.add_argument(
        "cases", nargs="*", help="topic, case or topic/case (default: all); stale cases of a whole run or topic go"
    )
    z.add_argument("--out", type=path_argument, default=str(ZOO), help="zoo directory (default: zoo/)")
    z.set_defaults(run=cmd_zoo)

    v = sub.add_parser("verify", help="check the zoo and run it on every runtime")
    v.add_argument("cases", nargs="*", help="topic, case or topic/case (default: all)")
    v.add_argument("--zoo", type=path_argument, default=str(ZOO), help="zoo directory (default: zoo/)")
    v.add_argument(
        "--runtime",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="add a runtime adapter class (repeatable)",
    )
    v.add_argument("--json", type=path_argument, default=str(MATRIX_JSON), help="where to write the matrix")
    v.add_argument(
        "--baseline",
        type=path_argument,
        default=str(BASELINE),
        help="committed cell statuses (conformance/baseline.json)",
    )
    v.add_argument(
        "--record", action="store_true", help="record the statuses of the cells run as the new baseline, on purpose"
    )
    v.add_argument(
        "--no-cache",
        action="store_true",
        help="run every cell again, even one whose runtime version, adapter and case bytes "
        "are unchanged since it last ran (build/verify-cache/)",
    )
    v.add_argument(
        "--cell-timeout",
        type=_seconds,
        default=CELL_TIMEOUT,
        metavar="SECONDS",
        help=f"longest a runtime may take on one case; a slower cell is an error (default {CELL_TIMEOUT:g})",
    )
    v.set_defaults(run=cmd_verify)

    b = sub.add_parser("bench", help="run proposals/<topic>/bench.py (not a test)")
    b.add_argument("topics", nargs="*", help="topics (default: every topic with a bench.py)")
    b.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    b.set_defaults(run=cmd_bench)

    n = sub.add_parser("new-proposal", help="scaffold proposals/NAME/ (document, cases, reference, test)")
    n.add_argument("name", help="snake_case topic name, e.g. flex_attention")
    n.set_defaults(run=cmd_new_proposal)

    s = sub.add_parser("snippets", help="export each blog post as standalone Markdown to build/snippets/")
    s.add_argument("--site-url", help="published site address: relative links become absolute links to it")
    s.set_defaults(run=cmd_snippets)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    tolerant_output()
    try:
        args = parser().parse_args(argv)
        status = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed(PROG)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
