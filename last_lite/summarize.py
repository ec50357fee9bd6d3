"""Gather a Hydra multirun folder into one table: ``python -m last_lite.summarize <folder>``.

Each job's swept values come from its ``.hydra/overrides.yaml`` and its accuracy from its
``metrics.json``; the table is printed and written as ``summary.md`` and ``summary.csv``. A key
that some jobs override and others do not takes, where a job lacks it, the value that job ran with
(its config-group choice or its ``.hydra/config.yaml`` entry), so a folder gathering single runs
(links to them) makes one table too. The markdown table lists the columns that differ between jobs
and names the shared values once below it; the CSV keeps every column. Overrides are shown in
today's spelling of renamed groups (a job run as ``distill.alpha=0.3`` is a ``kd.alpha`` row, see
``last_lite.config_checks.RENAMED_GROUPS``), so runs from before a rename share the columns of new ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from last_lite.config_checks import current_spelling, former_keys
from last_lite.io import atomic_write_text


@dataclass
class JobRecord:
    """What a job's ``.hydra`` folder says, read once: the root config it ran (``distill``,
    ``train``...), its config-group choices and its composed config."""

    command: str | None
    choices: dict
    config: dict | None

    @classmethod
    def read(cls, job: Path) -> "JobRecord":
        hydra_file, config_file = job / ".hydra" / "hydra.yaml", job / ".hydra" / "config.yaml"
        hydra = ((yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else None) or {}).get("hydra") or {}
        return cls(command=(hydra.get("job") or {}).get("config_name"),
                   choices=(hydra.get("runtime") or {}).get("choices") or {},
                   config=yaml.safe_load(config_file.read_text()) if config_file.is_file() else None)

    def value_ran_with(self, key: str) -> str | None:
        """``key``'s value: a config-group choice or a config entry (under the key's former
        spelling too, for a job run before its group was renamed)."""
        key = key.lstrip("+~")
        for spelling in (key, *former_keys(key, self.command)):
            if spelling in self.choices:
                return None if self.choices[spelling] is None else str(self.choices[spelling])
            node, found = self.config, True
            for part in spelling.split("."):
                if not isinstance(node, dict) or part not in node:
                    found = False
                    break
                node = node[part]
            if found:
                return None if isinstance(node, (dict, list)) or node is None else str(node)
        return None


def collect(folder: Path) -> tuple[list[str], list[dict]]:
    rows, keys, records = [], [], {}
    for job in sorted((p for p in folder.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row = {"job": job.name}
        records[job.name] = record = JobRecord.read(job)
        for item in overrides:
            key, _, value = current_spelling(str(item), record.command).partition("=")
            row[key] = value
            if key not in keys:
                keys.append(key)
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        row["test_top1"] = metrics.get("top1")
        row["best_val_top1"] = metrics.get("best_val_top1")
        row["status"] = "done" if metrics else "no metrics.json"
        rows.append(row)
    if not rows:
        raise SystemExit(f"no Hydra jobs (folders with .hydra/) under {folder}")
    for row in rows:
        for key in keys:
            if key not in row:
                row[key] = records[row["job"]].value_ran_with(key)
    return ["job", *keys, "test_top1", "best_val_top1", "status"], rows


def _fmt(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_tables(folder: Path) -> str:
    columns, rows = collect(folder)
    swept = [c for c in columns if c in ("job", "test_top1", "best_val_top1", "status")
             or len(rows) == 1 or len({r.get(c) for r in rows}) > 1]
    shared = [f"`{c}={rows[0].get(c)}`" for c in columns if c not in swept]
    md = ["| " + " | ".join(swept) + " |", "|" + "---|" * len(swept)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in swept) + " |" for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "summary.csv", buffer.getvalue())
    text = "\n".join(md) + "\n\nAccuracies in percent (test top-1 of the checkpoint chosen on validation)."
    text += f" Same in every job: {', '.join(shared)}.\n" if shared else "\n"
    atomic_write_text(folder / "summary.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/multirun/<date>/<time>_<task>), or "
                        "a folder of links to single runs")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.exit(2, f"summarize: error: {args.folder} is not a folder (a multirun prints its folder "
                       f"when it ends, e.g. outputs/multirun/<date>/<time>_distill)\n")
    print(write_tables(args.folder))


if __name__ == "__main__":
    main()
