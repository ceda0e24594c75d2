"""What benchmark reports say about the machine they ran on."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "finish", "header", "provenance", "report_head", "table", "write_report"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(module: str, argv: list[str] | None, note: str = "") -> dict[str, Any]:
    """The head of a report: the command that made it, when, on what, how loaded the machine was."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([f"python -m {module}", shlex.join(args)]).strip(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.machine()}",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "note": note,
    }


def finish(out: Path | None, results: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """Records the load average at the end in ``results``, then prints and writes the report ``render`` makes of
    them (:func:`write_report`)."""
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_report(out, render(results), results)


def write_report(out: Path | None, report: str, results: dict[str, Any]) -> None:
    """Prints the report; with ``out``, writes it (Markdown) and its results (JSON beside it)."""
    print("\n" + report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def report_head(title: str, r: dict[str, Any], setup: str = "") -> list[str]:
    """A report's title and first paragraph: :func:`provenance`, then ``setup`` (sentences, each after a space) and
    the run's note."""
    note = f" Note: {r['note']}" if r.get("note") else ""
    return [f"# {title}", "", provenance(r) + setup + note, ""]


def provenance(r: dict[str, Any]) -> str:
    """The report's first sentence: the command, when, where, and the load average before and after."""
    start = ", ".join(map(str, r["load_average_at_start"]))
    end = ", ".join(map(str, r["load_average_at_end"]))
    return f"`{r['command']}`, {r['date']}, on {r['machine']} (load average at the start {start}, at the end {end})."


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> list[str]:
    """A Markdown table's lines: the header, then one line per row. The first ``left`` columns (names) align left,
    the rest (figures) right. A float cell of 1 or more is written with one decimal, a smaller one with three
    significant digits (a difference of 2e-06 stays one); format a cell yourself to say otherwise."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.1f}" if v == 0 or abs(v) >= 1 else f"{v:.3g}"
        return str(v)

    rule = ["---"] * min(left, len(columns)) + ["---:"] * max(0, len(columns) - left)
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(rule) + "|",
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]
