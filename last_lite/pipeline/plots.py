"""Figures of the pipeline report (matplotlib, Agg): training curves and Pareto charts.

Every number drawn comes from a stage's files (csv/metrics.csv, metrics.json, report.json) or
from the published points of the config, which are drawn with their own marker and labelled
"published".
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from last_lite.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def read_curves(csv_path: Path) -> dict[str, dict[int, float]]:
    """Per-epoch series of a Lightning CSVLogger file: ``val/*`` as logged at the epoch's end,
    ``train/loss`` as the mean of the epoch's logged steps (or its epoch value)."""
    series: dict[str, dict[int, list[float]]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            e = int(float(epoch))
            for key in ("val/top1", "val/loss", "train/loss", "train/loss_epoch"):
                value = row.get(key)
                if value not in (None, ""):
                    series.setdefault(key, {}).setdefault(e, []).append(float(value))
    out = {k: {e: sum(v) / len(v) for e, v in sorted(d.items())} for k, d in series.items()}
    if "train/loss_epoch" in out:
        out["train/loss"] = out.pop("train/loss_epoch")
    return out


def training_curves(curves: Mapping[str, Mapping[str, Mapping[int, float]]], path: Path) -> Path | None:
    """One figure: validation top-1, training loss and validation loss per epoch, a line per stage."""
    if not curves:
        return None
    plt = _plt()
    panels = [("val/top1", "validation top-1 (%)", 100.0), ("train/loss", "training loss", 1.0),
              ("val/loss", "validation loss", 1.0)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title, scale) in zip(axes, panels):
        for stage, series in curves.items():
            points = series.get(key) or {}
            if points:
                xs = [e + 1 for e in points]
                ax.plot(xs, [scale * v for v in points.values()], marker="o", ms=3, label=stage)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x, higher y), sorted by x."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def pareto_chart(points: Iterable[Mapping[str, Any]], published: Iterable[Mapping[str, Any]],
                 x_key: str, x_label: str, title: str, path: Path, log_x: bool = True,
                 published_lines: bool = False) -> Path:
    """Accuracy against ``x_key``; ours as dots with the Pareto front, published points as
    stars labelled "(published)". A published point without ``x_key`` is left out, or drawn as a
    dashed horizontal line with ``published_lines`` (its accuracy, no x measured here)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ours = [p for p in points if p.get(x_key) is not None and p.get("top1") is not None]
    for p in ours:
        ax.scatter(p[x_key], 100 * p["top1"], s=40, zorder=3, marker=p.get("marker", "o"))
        ax.annotate(p["label"], (p[x_key], 100 * p["top1"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    front = pareto_front([(p[x_key], p["top1"]) for p in ours])
    if len(front) > 1:
        ax.step([x for x, _ in front], [100 * y for _, y in front], where="post", color="grey",
                alpha=0.6, lw=1, label="Pareto front (this run)")
    for p in published:
        if p.get("top1") is None:
            continue
        if p.get(x_key) is not None:
            ax.scatter(p[x_key], 100 * p["top1"], s=90, marker="*", color="black", zorder=4)
            ax.annotate(f"{p['name']} (published)", (p[x_key], 100 * p["top1"]),
                        textcoords="offset points", xytext=(5, -10), fontsize=7, style="italic")
        elif published_lines:
            ax.axhline(100 * p["top1"], ls="--", lw=0.8, color="black", alpha=0.5)
            ax.annotate(f"{p['name']} {100 * p['top1']:.1f} (published, not measured here)",
                        (0.01, 100 * p["top1"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 2), fontsize=7, style="italic")
    if log_x and ours:
        from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if front and len(front) > 1:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
