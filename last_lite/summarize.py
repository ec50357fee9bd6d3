"""Gather a Hydra multirun folder into one table: ``python -m last_lite.summarize <folder>``.

Each job's swept values come from its ``.hydra/overrides.yaml`` and its accuracy from its
``metrics.json``; the table is printed and written as ``summary.md`` and ``summary.csv``. A key
that some jobs override and others do not takes, where a job lacks it, the value that job ran with
(its config-group choice or its ``.hydra/config.yaml`` entry), so a folder gathering single runs
(links to them) makes one table too. A run kept as a record (its ``config.yaml`` and ``metrics.json``,
no ``.hydra/``, as docs/ keeps them) joins with the values of its ``config.yaml``; its config-group
choices are unknown (``?``; a column in which only they differ is not shown, and in a cell they are the
one choice the other jobs show). Having no overrides, records of one command and network that differ
in a config key (where and how each ran, its seed and paths inside its own folder aside) get that key
as a column, so records of two configs are not one cell. The markdown table lists the columns that
differ between jobs and names the shared values once below it; the CSV keeps every column. Overrides
(and a record's keys) are shown in today's spelling of renamed groups (a job run as
``distill.alpha=0.3`` is a ``kd.alpha`` row, see ``last_lite.config_checks.RENAMED_GROUPS``), so runs
from before a rename share the columns of new ones. A job whose files cannot be read (a damaged
``metrics.json`` or ``.hydra`` file) stays in the table with the reason as its status, is named on
stderr, and counts in no cell.

``--paired [--reference key=value ...]`` also groups the jobs into cells (the same command and
values but the seed) and writes ``paired.md``: each cell's n, mean and standard deviation of test
top-1, and its paired difference from the reference cell of the same network (the one trained: a
distillation's student) over the seeds both ran (mean, sd and the paired t statistic
``mean / (sd / sqrt(n))``), e.g. for a folder of links to standalone and distilled runs of both
students: ``python -m last_lite.summarize cells/ --paired --reference command=train``. A value is
compared in one spelling however given: ``4`` and ``4.0``, ``False`` and ``false``, ``null`` and a
config's null (``--reference init_from=null``: the runs that started from no checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from last_lite.config_checks import computed_difference_keys, current_spelling, flatten_config, former_keys, is_execution_key
from last_lite.io import atomic_write_text
from last_lite.pipeline.state import last_logged_epoch


#: a record's value for a key its config.yaml lacks (a config-group choice)
UNKNOWN = "?"


def canonical(value: str | None) -> str | None:
    """One spelling per number (an override's ``4``, a config's ``4.0``), boolean (``False``, a config's
    ``false``) and null (an override's ``null``, a config's None), so that they share a cell."""
    if value is None or value.lower() == "null":  # Hydra reads null, true and false in any case
        return None
    if value.lower() in ("true", "false"):
        return value.lower()
    try:
        return str(int(value))
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else repr(number)


def spelled(node) -> str | None:
    """A config value as an override spells it (``true``, ``[1.0472,1.0472,0]``), None for null."""
    if node is None:
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, list):
        return "[" + ",".join("null" if (text := spelled(item)) is None else text for item in node) + "]"
    return canonical(str(node))


def differs(values) -> bool:
    """More than one value, a record's unknown one matching any."""
    return len(set(values) - {UNKNOWN}) > 1


@dataclass
class JobRecord:
    """What a job's ``.hydra`` folder (or a record's ``config.yaml``) says, read once: the root config
    it ran (``distill``, ``train``...), its config-group choices, its composed config and overrides."""

    command: str | None
    choices: dict | None  # None: a record's, unknown
    config: dict | None
    overrides: list

    @classmethod
    def read(cls, job: Path) -> "JobRecord":
        """Raises ``UnreadableFile`` naming the file that is not the YAML a run leaves."""
        if not (job / ".hydra").is_dir():  # a record: the run's own config.yaml names its command
            config = read_file(job / "config.yaml", yaml.safe_load, dict) or {}
            return cls(command=config.get("task_name"), choices=None, config=config, overrides=[])

        def load(name: str, kind: type):
            path = job / ".hydra" / name
            return read_file(path, yaml.safe_load, kind) if path.is_file() else None

        hydra = (load("hydra.yaml", dict) or {}).get("hydra") or {}
        return cls(command=(hydra.get("job") or {}).get("config_name"),
                   choices=(hydra.get("runtime") or {}).get("choices") or {},
                   config=load("config.yaml", dict), overrides=load("overrides.yaml", list) or [])

    def value_ran_with(self, key: str) -> str | None:
        """``key``'s value: a config-group choice or a config entry (under the key's former
        spelling too, for a job run before its group was renamed)."""
        key = key.lstrip("+~")
        for spelling in (key, *former_keys(key, self.command)):
            if self.choices and spelling in self.choices:
                return None if self.choices[spelling] is None else str(self.choices[spelling])
            node, found = self.config, True
            for part in spelling.split("."):
                if not isinstance(node, dict) or part not in node:
                    found = False
                    break
                node = node[part]
            if found:
                if isinstance(node, dict):  # a group: a record's choice is unknown
                    return UNKNOWN if self.choices is None else None
                return spelled(node)
        return UNKNOWN if self.choices is None else None

    def flat_config(self) -> dict:
        """The config as ``{"dotted.key": value}`` in today's spelling of renamed groups."""
        return {current_spelling(f"{key}=", self.command).partition("=")[0]: value
                for key, value in flatten_config(self.config or {}).items()}


class UnreadableFile(ValueError):
    pass


def read_file(path: Path, parse, kind: type):
    """``parse(text)`` of ``path``, which must give a ``kind`` (or nothing: an empty file)."""
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:  # JSONDecodeError: a ValueError
        raise UnreadableFile(f"unreadable {path.name}: {str(error).splitlines()[0]}") from error
    if value is not None and not isinstance(value, kind):
        raise UnreadableFile(f"unreadable {path.name}: a {type(value).__name__}, not a {kind.__name__}")
    return value


def is_job(folder: Path) -> bool:
    """A Hydra job's folder, or a record of a finished run (config.yaml and metrics.json)."""
    return folder.is_dir() and ((folder / ".hydra").is_dir()
                                or ((folder / "config.yaml").is_file() and (folder / "metrics.json").is_file()))


def collect(folder: Path) -> tuple[list[str], list[dict], dict[str, JobRecord]]:
    """The table's columns, one row per job, and each job's Hydra record by job name."""
    rows, keys, records, ran_in = [], [], {}, {}
    for job in sorted(filter(is_job, folder.iterdir()), key=lambda p: (len(p.name), p.name)):
        row = {"job": job.name}
        metrics_file = job / "metrics.json"
        try:
            records[job.name] = record = JobRecord.read(job)
            metrics = (read_file(metrics_file, json.loads, dict) if metrics_file.is_file() else None) or {}
            top1 = metrics.get("top1")
            if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, (int, float))):
                raise UnreadableFile(f"unreadable metrics.json: top1 is {top1!r}, not a number")
        except UnreadableFile as error:
            records[job.name] = JobRecord(command=None, choices={}, config={}, overrides=[])
            row.update(network=None, test_top1=None, best_val_top1=None, status=str(error))
            rows.append(row)
            continue
        for item in record.overrides:
            key, _, value = current_spelling(str(item), record.command).partition("=")
            row[key] = canonical(value)
            if key not in keys:
                keys.append(key)
        # the one trained: a distill job's student
        row["network"] = metrics.get("model") or record.value_ran_with("model@student") or record.value_ran_with("model")
        row["test_top1"] = top1
        row["best_val_top1"] = metrics.get("best_val_top1")
        row["status"] = "done" if metrics else unfinished_status(job, record)
        ran_in[job.name] = metrics.get("precision")
        rows.append(row)
    if not rows:
        raise SystemExit(f"no Hydra jobs (folders with .hydra/) or run records (config.yaml and metrics.json) "
                         f"under {folder}")
    flat = {row["job"]: records[row["job"]].flat_config() for row in rows if records[row["job"]].choices is None}
    in_records = record_differences(rows, records, flat)
    keys += [key for key in in_records if key not in keys]
    for row in rows:
        for key in keys:
            if key not in row:
                # a record lacking a key another record has: absent, not an unknown group choice
                row[key] = (spelled(flat[row["job"]].get(key)) if key in in_records and row["job"] in flat
                            else canonical(records[row["job"]].value_ran_with(key)))
        if "trainer.precision" in keys and ran_in.get(row["job"]):
            row["trainer.precision"] = ran_in[row["job"]]  # what `auto` resolved to
    return ["job", "network", *keys, "test_top1", "best_val_top1", "status"], rows, records


def record_differences(rows: list[dict], records: dict[str, JobRecord], flat: dict[str, dict]) -> list[str]:
    """The config keys in which the run records (``flat``: their configs) of one command and network
    differ: a record has no overrides to say what its run changed. Execution keys, the seed and paths
    inside each run's own folder are left aside, as a resumed run's check of its folder does."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["job"] in flat:
            groups.setdefault((records[row["job"]].command, row["network"]), []).append(flat[row["job"]])
    found: set[str] = set()
    for first, *others in groups.values():
        for other in others:  # a key in which any two differ differs between one of them and the first
            for saved, current in ((first, other), (other, first)):  # `precision: auto` is spared one way
                found.update(computed_difference_keys(saved, current)[0])
    return sorted(found - {"seed"})


def unfinished_status(job: Path, record: JobRecord) -> str:
    """A job without metrics.json: running or cut off at the last epoch its CSV logger flushed."""
    epoch = last_logged_epoch(job)
    if epoch is None:
        return "no metrics.json, no epoch logged"
    total = record.value_ran_with("trainer.max_epochs")
    return f"no metrics.json, at epoch {epoch + 1}" + (f" of {total}" if total not in (None, UNKNOWN) else "")


def _fmt(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_tables(folder: Path) -> str:
    columns, rows, _ = collect(folder)
    for row in rows:
        if row["status"].startswith("unreadable"):
            print(f"summarize: {folder / row['job']}: {row['status']} (in the table without a result)",
                  file=sys.stderr)
    fixed = ("job", "test_top1", "best_val_top1", "status")
    # the table leaves out where a run resumed from and how it executed (summary.csv keeps them)
    computed = [c for c in columns if c in fixed or not is_execution_key(c)]
    swept = [c for c in computed if c in fixed or len(rows) == 1 or differs(r.get(c) for r in rows)]
    shared = [f"`{c}={next((r[c] for r in rows if r.get(c) != UNKNOWN), UNKNOWN)}`" for c in computed
              if c not in swept]
    md = ["| " + " | ".join(swept) + " |", "|" + "---|" * len(swept)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in swept) + " |" for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "summary.csv", buffer.getvalue())
    text = "\n".join(md) + ("\n\nAccuracies in percent: test top-1 of the checkpoint each run's "
                             "selection rule handed on (metrics.json `selection`).")
    text += f" Same in every job: {', '.join(shared)}.\n" if shared else "\n"
    atomic_write_text(folder / "summary.md", text)
    return text


NOT_A_CELL_KEY = ("job", "seed", "test_top1", "best_val_top1", "status")


@dataclass
class Cell:
    """The jobs that ran the same command and values but the seed: test top-1 (%) by seed."""

    key: tuple[tuple[str, str | None], ...]
    top1_by_seed: dict[str, float]

    def label(self, shown: list[str]) -> str:
        return ", ".join(f"{k}={'null' if v is None else v}" for k, v in self.key if k in shown) or "(all jobs)"

    def matches(self, wanted: dict[str, str]) -> bool:
        values = dict(self.key)
        return all(k in values and values[k] == canonical(v) for k, v in wanted.items())


def cells_of(folder: Path, same: tuple[str, ...] = ()) -> list[Cell]:
    """The folder's finished jobs grouped by command and values, the seed left out, and the keys in
    ``same`` (values that name one thing two ways, e.g. a teacher's run checkpoint and its zoo copy)."""
    columns, rows, records = collect(folder)
    keys = ["command", *(c for c in columns
                         if c not in NOT_A_CELL_KEY and c not in same and not is_execution_key(c))]
    finished = [{**row, "command": records[row["job"]].command} for row in rows if row["test_top1"] is not None]
    for k in keys:
        known = {values.get(k) for values in finished} - {UNKNOWN}
        if len(known) == 1:  # a record's unknown choice is the one the jobs show, as the tables label it
            for values in finished:
                values[k] = next(iter(known))
    cells: dict[tuple, Cell] = {}
    for values in finished:
        record = records[values["job"]]
        key = tuple((k, None if values.get(k) is None else str(values.get(k))) for k in keys)
        seed = values.get("seed") or record.value_ran_with("seed")
        cell = cells.setdefault(key, Cell(key, {}))
        if str(seed) in cell.top1_by_seed:
            raise SystemExit(f"summarize: two jobs of one cell ran seed {seed} ({cell.label([k for k, _ in key])}): "
                             "a cell needs one job per seed")
        cell.top1_by_seed[str(seed)] = 100 * float(values["test_top1"])
    return list(cells.values())


def paired_difference(cell: Cell, reference: Cell) -> dict:
    """Mean, sd and paired t of ``cell - reference`` over the seeds both ran (t needs 2 pairs)."""
    seeds = sorted(set(cell.top1_by_seed) & set(reference.top1_by_seed))
    diffs = [cell.top1_by_seed[s] - reference.top1_by_seed[s] for s in seeds]
    out = {"pairs": len(diffs), "mean": statistics.mean(diffs) if diffs else None, "sd": None, "t": None}
    if len(diffs) >= 2:
        out["sd"] = statistics.stdev(diffs)
        out["t"] = out["mean"] / (out["sd"] / math.sqrt(len(diffs))) if out["sd"] > 0 else None
    return out


def write_paired_table(folder: Path, reference: dict[str, str] | None = None, same: tuple[str, ...] = ()) -> str:
    cells = cells_of(folder, same)
    if not cells:
        raise SystemExit(f"summarize: no finished job (metrics.json with a test top-1) under {folder}")
    keys = [k for k, _ in cells[0].key]
    shown = [k for k in keys if differs(dict(c.key).get(k) for c in cells)]
    # one reference per network: a distilled nano is paired with the standalone nano, not the small
    refs: dict[str | None, Cell] = {}
    if reference:
        wanted = " ".join(f"{k}={v}" for k, v in reference.items())
        found = [c for c in cells if c.matches(reference)]
        if not found:
            raise SystemExit(f"summarize: --reference {wanted} matches 0 cells, not one; the cells: "
                             + "; ".join(c.label(shown) for c in cells))
        for cell in found:
            network = dict(cell.key).get("network")
            if network in refs:
                raise SystemExit(f"summarize: --reference {wanted} matches more than one cell of network "
                                 f"{network}: {refs[network].label(shown)}; {cell.label(shown)}")
            refs[network] = cell

    def num(value: float | None, sign: bool = False) -> str:
        return "" if value is None else (f"{value:+.2f}" if sign else f"{value:.2f}")

    header = ["cell", "n", "seeds", "mean", "sd"] + (["paired diff", "sd diff", "t", "pairs"] if refs else [])
    md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for cell in cells:
        values = list(cell.top1_by_seed.values())
        ref = refs.get(dict(cell.key).get("network"))
        row = [cell.label(shown) + (" (reference)" if cell is ref else ""), str(len(values)),
               " ".join(sorted(cell.top1_by_seed)), num(statistics.mean(values)),
               num(statistics.stdev(values) if len(values) > 1 else None)]
        if refs:
            diff = paired_difference(cell, ref) if ref is not None and cell is not ref else {}
            row += [num(diff.get("mean"), sign=True), num(diff.get("sd")), num(diff.get("t")),
                    str(diff.get("pairs", ""))]
        md.append("| " + " | ".join(row) + " |")
    text = "\n".join(md) + "\n\nTest top-1 in percent; sd over seeds (n - 1)."
    if same:
        text += f" Taken as the same whatever their values (--same): {', '.join(same)}."
    if refs:
        text += (" Paired difference: the cell minus the reference cell of the same network (metrics.json"
                 " `model`) on the seeds both ran; t = mean / (sd / sqrt(pairs)), with pairs - 1 degrees of"
                 " freedom.")
    text += "\n"
    atomic_write_text(folder / "paired.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/multirun/<date>/<time>_<task>), or "
                        "a folder of links to single runs")
    parser.add_argument("--paired", action="store_true",
                        help="also group jobs into cells over seeds and write paired.md")
    parser.add_argument("--reference", nargs="+", metavar="KEY=VALUE",
                        help="with --paired: the cell (one per network) the others are compared with, e.g. command=train")
    parser.add_argument("--same", nargs="+", default=[], metavar="KEY",
                        help="with --paired: keys whose values name one thing two ways, left out of the cells, "
                             "e.g. teacher.ckpt given as a run's last.ckpt and as its zoo copy")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.exit(2, f"summarize: error: {args.folder} is not a folder (a multirun prints its folder "
                       f"when it ends, e.g. outputs/multirun/<date>/<time>_distill)\n")
    if (args.reference or args.same) and not args.paired:
        parser.exit(2, "summarize: error: --reference and --same are about cells: add --paired\n")
    reference = None
    if args.reference:
        if any("=" not in item for item in args.reference):
            parser.exit(2, "summarize: error: --reference takes KEY=VALUE pairs, e.g. command=train\n")
        reference = dict(item.split("=", 1) for item in args.reference)
    print(write_tables(args.folder))
    if args.paired:
        print(write_paired_table(args.folder, reference, tuple(args.same)))


if __name__ == "__main__":
    main()
