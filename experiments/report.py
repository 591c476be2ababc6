"""``python -m experiments report RUN [RUN ...]``: one Markdown table and one figure from the metrics.json of
several runs, so result tables are generated, not typed.

Each RUN is a run folder, a folder holding run folders (searched recursively for ``metrics.json``), or a
metrics.json file. A row per run and stage (``baseline`` = untrained, step 0; ``val``; ``test``); columns are
the metric keys asked for (``--metrics``, without the ``val/`` or ``test/`` prefix) or, by default, the
common headline keys found. Writes the table to stdout and, with ``--out``, to a file; ``--figure`` draws
one grouped bar chart (a group per metric, a bar per row).

Example::

    python -m experiments report runs/ --stages baseline test --metrics mP@5 kNN@5 RR \
        --out docs/results.md --figure docs/results.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

HEADLINE = ("mP@4", "mP@5", "mP@10", "AP@10", "P@1", "P@10", "kNN@5", "RR", "cross_patient/mP@10",
            "cross_patient/P@1", "same_patient/mP@10")
STAGES = ("baseline", "val", "test")


def find_metrics(paths: Sequence[str | Path]) -> list[Path]:
    """metrics.json files named by or found under ``paths`` (sorted, unique)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("metrics.json"))
        else:
            raise FileNotFoundError(f"report: {p} is neither a metrics.json file nor a folder")
    if not found:
        raise FileNotFoundError(f"report: no metrics.json under {', '.join(map(str, paths))}")
    return sorted(dict.fromkeys(found))


def run_name(path: Path, base: Path | None = None) -> str:
    """A short name for the run of ``metrics.json`` at ``path``: its folder relative to ``base``."""
    folder = path.parent
    try:
        return str(folder.relative_to(base)) if base is not None else str(folder)
    except ValueError:
        return str(folder)


def rows_of(path: Path, stages: Sequence[str], base: Path | None = None) -> list[dict]:
    """One dict per stage present: run, stage, epoch, step, queries and the metrics without the prefix."""
    data = json.loads(path.read_text())
    rows = []
    for stage in stages:
        section = data.get(stage)
        if not isinstance(section, dict) or "metrics" not in section:
            continue
        prefix = "val/" if stage == "baseline" else f"{stage}/"
        metrics = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in section["metrics"].items()}
        rows.append({"run": run_name(path, base), "stage": stage, "epoch": section.get("epoch"),
                     "step": section.get("global_step"),
                     "queries": _count(metrics.get("n_queries_scored", metrics.get("n_queries"))),
                     "metrics": metrics})
    return rows


def _count(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown(rows: list[dict], metrics: Sequence[str]) -> str:
    head = ["run", "stage", "step", "queries", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["stage"], _fmt(r["step"]), _fmt(r["queries"]), *(_fmt(r["metrics"].get(m))
                                                                             for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], metrics: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(rows)) ** 0.5), 3.6))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        values = [r["metrics"].get(m, float("nan")) for m in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], values, width, label=f"{r['run']} ({r['stage']})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(paths: Sequence[str | Path], metrics: Sequence[str] | None = None,
           stages: Sequence[str] = ("baseline", "test"), base: str | Path | None = None) -> tuple[str, list[dict]]:
    """(Markdown table, rows) for the metrics.json files under ``paths``."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"report: unknown stage(s) {bad}; expected some of {STAGES}")
    files = find_metrics(paths)
    if base is None:  # run names relative to the folders given (a single run: its parent)
        folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
        common = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
        base = common.parent if len(files) == 1 or common == files[0].parent.resolve() else common
        files = [f.resolve() for f in files]
    base = Path(base)
    rows = [r for p in files for r in rows_of(p, stages, base)]
    if not rows:
        raise ValueError(f"report: no {'/'.join(stages)} section in the metrics.json files under "
                         f"{', '.join(map(str, paths))}")
    if not metrics:
        present = {m for r in rows for m in r["metrics"]}
        metrics = [m for m in HEADLINE if m in present]
    return markdown(rows, metrics), rows


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m experiments report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, folders of runs, or metrics.json files")
    parser.add_argument("--metrics", nargs="+", help="keys without the stage prefix, e.g. mP@5 P@1 RR")
    parser.add_argument("--stages", nargs="+", default=["baseline", "test"], choices=STAGES)
    parser.add_argument("--base", help="print run folders relative to this folder")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--figure", help="write a grouped bar chart (PNG) of the same numbers")
    args = parser.parse_args(argv)
    try:
        table, rows = report(args.runs, args.metrics, args.stages, args.base)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    if args.figure:
        metrics = args.metrics or [m for m in HEADLINE if any(m in r["metrics"] for r in rows)]
        print(f"figure: {figure(rows, metrics, Path(args.figure))}")
    return table
