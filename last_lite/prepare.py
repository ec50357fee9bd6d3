"""Raw NTU RGB+D ``.skeleton`` files -> a :class:`~last_lite.data.store.SkeletonStore`.

    python -m last_lite.prepare dataset=ntu60 raw_dir=/data/nturgb+d_skeletons out_dir=data/ntu60
    python -m last_lite.prepare dataset=ntu120 'raw_dir=[/data/s001_s017,/data/s018_s032]' out_dir=data/ntu120

Every file is parsed (:func:`last_lite.data.ntu_skeleton.read_skeleton`), denoised
(:func:`last_lite.data.ntu_skeleton.denoise`: at most two actors, empty frames dropped) and pre-normalised
(:func:`last_lite.data.normalize.pre_normalize_3d`). Files are processed in chunks on all cores;
each chunk is saved as a shard in the work folder, so an interrupted run resumes where it stopped;
the shards are merged into the store at the end (written atomically by ``StoreWriter``). A file
that fails to parse is reported and skipped; names on the official missing-skeleton list are
skipped; so is anything that is not a regular file (a dangling symlink, a symlink loop, a FIFO: a
report line each). The summary is printed and saved as ``prepare_summary.json`` in the store.
When no file is usable the command fails (exit status 1, no store written, the reasons printed).
One ``prepare`` at a time per ``out_dir``: a second one stops at once, naming the first's pid
(``.<out_dir name>.lock`` beside it, an ``flock``: released when its holder ends or dies).

Only numpy and last_lite's numpy modules are imported at module level (the worker processes import
this module); Hydra and rich are imported by :func:`main` / :func:`run_prepare`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from last_lite.data.normalize import pre_normalize_3d
from last_lite.io import FileLock, LockHeld, atomic_write, atomic_write_text
from last_lite.data.ntu_skeleton import (
    DATASET_BENCHMARKS,
    DATASET_CLASSES,
    SkeletonFormatError,
    denoise,
    in_dataset,
    parse_sample_name,
    read_sample_list,
    read_skeleton,
    split_indices,
)

SHARD_VERSION = 1
LAYOUT = "ntu25"
_REPO_LISTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ntu" / "lists"

# status of one file
KEPT = "kept"
MISSING = "missing-skeleton list"
PARSE_ERROR = "parse error"
EMPTY = "empty after denoising"
ERROR = "processing error"
NOT_REGULAR = "not a regular file"


class PrepareError(RuntimeError):
    """``prepare`` cannot produce a store (no usable file, another run on the same out_dir)."""


# ----------------------------------------------------------------------------------------------
# one file / one chunk (run in the worker processes)


def process_file(path: str | os.PathLike, normalize: bool = True) -> tuple[np.ndarray | None, str, str]:
    """One raw file -> (keypoints (M, T, 25, 3) float32 or None, status, reason)."""
    try:
        sk = read_skeleton(path)
    except SkeletonFormatError as exc:
        return None, PARSE_ERROR, str(exc)
    try:
        res = denoise(sk)
        if res is None:
            nb = len(sk["body_ids"])
            why = "no body in any frame" if nb == 0 else f"all {nb} bodies filtered as noise"
            return None, EMPTY, f"{path}: {why}"
        kp = res.keypoints
        if normalize:
            kp = pre_normalize_3d(kp, LAYOUT)
        kp = np.ascontiguousarray(kp, dtype=np.float32)
        if kp.shape[0] < 1 or kp.shape[1] < 1:
            return None, EMPTY, f"{path}: no frame left after normalisation"
        return kp, KEPT, ""
    except Exception as exc:  # a bug or an unforeseen file: report it, finish the rest
        return None, ERROR, f"{path}: {type(exc).__name__}: {exc}"


def process_chunk(task: tuple[str, list[str], bool]) -> dict[str, Any]:
    """Process the files of one chunk and save them as one shard (``.npz``, atomically).

    The shard holds ``frames`` (R, 25, 3) float32 (the kept samples' (M, T) rows, concatenated),
    ``persons`` and ``lengths`` per kept sample, and ``status`` (JSON, one entry per file).
    Returns ``{"shard", "counts"}``.
    """
    shard, paths, normalize = task
    frames, persons, lengths, status = [], [], [], []
    for p in paths:
        kp, st, reason = process_file(p, normalize)
        entry = {"name": Path(p).stem, "status": st}
        if reason:
            entry["reason"] = reason
        if kp is not None:
            m, t = kp.shape[:2]
            frames.append(kp.reshape(m * t, *kp.shape[2:]))
            persons.append(m)
            lengths.append(t)
        status.append(entry)
    buf = io.BytesIO()
    np.savez(
        buf,
        frames=np.concatenate(frames) if frames else np.zeros((0, 25, 3), np.float32),
        persons=np.asarray(persons, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64),
        status=np.frombuffer(json.dumps(status).encode("utf-8"), dtype=np.uint8),
    )
    atomic_write(Path(shard), lambda tmp: tmp.write_bytes(buf.getvalue()))
    return {"shard": shard, "counts": dict(Counter(s["status"] for s in status)), "files": len(paths)}


def load_shard(path: str | os.PathLike, frames: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, list[dict]]:
    """(frames, persons, lengths, status) of a shard; ``frames=False`` skips the big array but
    still checks its size against the index (a cheap validity check for resuming)."""
    with np.load(path, allow_pickle=False) as z:
        status = json.loads(z["status"].tobytes().decode("utf-8"))
        persons, lengths = z["persons"], z["lengths"]
        rows = int((persons * lengths).sum())
        if frames:
            arr = z["frames"]
            nrows = len(arr)
        else:
            arr = None
            info = z.zip.getinfo("frames.npy")
            nrows = (info.file_size - _npy_header_len(z.zip, "frames.npy")) // (25 * 3 * 4)
    if len(persons) != sum(s["status"] == KEPT for s in status) or rows != nrows:
        raise ValueError(f"inconsistent shard {path}")
    return arr, persons, lengths, status


def _npy_header_len(zf: Any, name: str) -> int:
    with zf.open(name) as f:
        head = f.read(10)
    if head[6:7] == b"\x01":
        return 10 + int.from_bytes(head[8:10], "little")
    with zf.open(name) as f:
        head = f.read(12)
    return 12 + int.from_bytes(head[8:12], "little")


# ----------------------------------------------------------------------------------------------
# the driver


def _as_list(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [str(x)]
    return [str(v) for v in x]


def _not_regular(path: str) -> str | None:
    """Why ``path`` cannot be read as a file (dangling symlink, symlink loop, FIFO, folder...)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return "dangling symlink"
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device, socket or other special file")
    return None


def find_raw_files(raw_dirs: Sequence[str], dataset: str,
                   report: dict[str, Any] | None = None) -> tuple[list[Path], dict[str, int]]:
    """The dataset's ``S*.skeleton`` files in ``raw_dirs`` sorted by name (first folder wins).

    Names that are not regular files (dangling symlinks, symlink loops, FIFOs, folders) are left
    out; ``report`` (a dict, filled in) gets ``unreadable``: one status entry per such name, and
    ``examples``: up to three names per reason a name was ignored, and ``others``: the count of
    names not ending in ``.skeleton``."""
    files: dict[str, Path] = {}
    ignored = Counter()
    unreadable: list[dict] = []
    examples: dict[str, list[str]] = {}
    others = 0
    for d in raw_dirs:
        root = Path(d)
        if not root.is_dir():
            raise FileNotFoundError(f"raw_dir {root} is not a folder")
        with os.scandir(root) as it:
            for e in it:
                if not e.name.endswith(".skeleton"):
                    others += 1
                    continue
                try:
                    info = parse_sample_name(e.name)
                except ValueError:
                    why = "not an NTU sample name"
                else:
                    why = (f"not in {dataset}" if not in_dataset(info, dataset)
                           else "duplicate name" if info.name in files else None)
                if why is not None:
                    ignored[why] += 1
                    names = examples.setdefault(why, [])
                    if len(names) < 3:
                        names.append(e.name)
                    continue
                problem = _not_regular(e.path)
                if problem is not None:
                    unreadable.append({"name": info.name, "status": NOT_REGULAR,
                                       "reason": f"{e.path}: {problem}"})
                    continue
                files[info.name] = Path(e.path)
    if report is not None:
        report.update(unreadable=unreadable, examples=examples, others=others)
    return [files[k] for k in sorted(files)], dict(ignored)


def _nothing_found(dataset: str, raw_dirs: Sequence[str], ignored: dict[str, int],
                   report: dict[str, Any]) -> str:
    parts = [f"{n} {why} (e.g. {', '.join(report['examples'].get(why, []))})"
             for why, n in sorted(ignored.items())]
    parts += [f"{len(report['unreadable'])} not a regular file"] if report["unreadable"] else []
    parts += [f"{report['others']} not ending in .skeleton"] if report["others"] else []
    found = "; ".join(parts) if parts else "the folder is empty"
    return (f"no usable {dataset} .skeleton file in {', '.join(raw_dirs)}: {found}. "
            f"NTU names look like S001C001P001R001A001.skeleton ({dataset}: "
            f"{'setups 1-17, actions 1-60' if dataset == 'ntu60' else 'setups 1-32, actions 1-120'})")


def resolve_missing_list(missing_list: Any, dataset: str, raw_dirs: Sequence[str]) -> Path | None:
    if missing_list is None or str(missing_list).lower() in ("none", "null", "false", ""):
        return None
    if str(missing_list).lower() != "auto":
        p = Path(str(missing_list))
        if not p.is_file():
            raise FileNotFoundError(f"missing_list {p} not found")
        return p
    fname = f"{dataset}_missing_skeletons.txt"
    candidates = []
    for d in raw_dirs:
        candidates += [Path(d) / fname, Path(d).parent / fname, Path(d).parent / "lists" / fname]
    candidates.append(_REPO_LISTS / fname)
    for c in candidates:
        if c.is_file():
            return c
    return None


def _chunk_key(paths: Sequence[Path], normalize: bool) -> str:
    h = hashlib.sha256(f"v{SHARD_VERSION} normalize={bool(normalize)}".encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"\n{p.name} {st.st_size} {st.st_mtime_ns}".encode())
        except OSError:  # gone or replaced since it was listed: process_file reports it
            h.update(f"\n{p.name} unreadable".encode())
    return h.hexdigest()[:16]


def remove_shards(work: Path, shards: Sequence[Path]) -> None:
    """Delete this run's shards, then ``work`` if that left it empty: it may be a folder the user
    named that holds other files, or the shards of another prepare sharing it."""
    for shard in shards:
        shard.unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:  # not empty (or already gone): leave it
        pass


def _run_tasks(tasks: list, num_workers: int, done: Any) -> None:
    """Run the chunk tasks (in a process pool unless one worker); ``done(result)`` per chunk."""
    if num_workers <= 1 or len(tasks) == 1:
        for task in tasks:
            done(process_chunk(task))
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(max_workers=min(num_workers, len(tasks)))
    try:
        futures = [ex.submit(process_chunk, t) for t in tasks]
        for fut in as_completed(futures):
            done(fut.result())
    except BrokenProcessPool as exc:
        raise RuntimeError("a worker process died (out of memory?); the finished chunks are saved: "
                           "run the same command again to resume") from exc
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def run_prepare(
    dataset: str,
    raw_dir: str | Sequence[str],
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    missing_list: str | os.PathLike | None = "auto",
    num_workers: int | None = None,
    chunk_size: int = 200,
    resume: bool = True,
    keep_work: bool = False,
    normalize: bool = True,
    progress: bool = True,
    limit: int | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Build the store; returns the summary dict (also saved in the store). Raises
    :class:`PrepareError` when no file is usable or another ``prepare`` writes ``out_dir``."""
    out = Path(out_dir)
    lock = FileLock(out.with_name(f".{out.name}.lock"), wait=False, what="another prepare")
    try:
        lock.__enter__()
    except LockHeld as exc:
        raise PrepareError(f"{exc}: it is writing {out}; wait for it to finish or choose "
                           "another out_dir") from None
    try:
        return _run_prepare(dataset, raw_dir, out, work_dir, missing_list, num_workers, chunk_size,
                            resume, keep_work, normalize, progress, limit, console)
    finally:
        lock.__exit__(None, None, None)


def _run_prepare(dataset, raw_dir, out, work_dir, missing_list, num_workers, chunk_size, resume,
                 keep_work, normalize, progress, limit, console) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from last_lite.data.store import StoreWriter

    console = console or Console(soft_wrap=True)
    t0 = time.perf_counter()
    if dataset not in DATASET_BENCHMARKS:
        raise ValueError(f"dataset must be one of {sorted(DATASET_BENCHMARKS)}, got {dataset!r}")
    raw_dirs = _as_list(raw_dir)
    if not raw_dirs:
        raise ValueError("raw_dir is required")
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    num_workers = int(num_workers or os.cpu_count() or 1)
    chunk_size = max(int(chunk_size), 1)

    found: dict[str, Any] = {}
    files, ignored = find_raw_files(raw_dirs, dataset, found)
    unreadable = found["unreadable"]
    if limit:
        files = files[: int(limit)]
    if not files:
        raise PrepareError(_nothing_found(dataset, raw_dirs, ignored, found))
    mpath = resolve_missing_list(missing_list, dataset, raw_dirs)
    missing = set(read_sample_list(mpath)) if mpath else set()

    status_missing = [{"name": p.stem, "status": MISSING} for p in files if p.stem in missing]
    todo = [p for p in files if p.stem not in missing]
    # at least 16 chunks, so that the last ones do not leave cores idle; independent of the
    # worker count so that a resumed run finds the same chunks
    size = max(1, min(chunk_size, -(-len(todo) // 16)))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    work.mkdir(parents=True, exist_ok=True)
    shards = [work / f"chunk-{k:05d}-{_chunk_key(c, normalize)}.npz" for k, c in enumerate(chunks)]
    reused = 0
    tasks = []
    for shard, chunk in zip(shards, chunks):
        if resume and shard.is_file():
            try:
                load_shard(shard, frames=False)
                reused += 1
                continue
            except Exception:
                shard.unlink()
        tasks.append((str(shard), [str(p) for p in chunk], bool(normalize)))

    console.print(
        f"[bold]prepare {dataset}[/]: {len(files)} files in {', '.join(raw_dirs)}"
        f"{f' ({len(unreadable)} more not regular files, skipped)' if unreadable else ''}; "
        f"{len(status_missing)} on the missing list ({mpath or 'no list'}); "
        f"{len(chunks)} chunks, {reused} reused from {work}; {num_workers} workers"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        job = bar.add_task("files", total=len(todo), completed=len(todo) - sum(len(t[1]) for t in tasks))
        if tasks:
            _run_tasks(tasks, num_workers, lambda res: bar.advance(job, res["files"]))
    t_proc = time.perf_counter() - t0

    # merge the shards, in file order
    classes = list(DATASET_CLASSES[dataset])
    counts = Counter({MISSING: len(status_missing), NOT_REGULAR: len(unreadable)})
    skipped: list[dict] = list(status_missing) + list(unreadable)
    infos = []
    kept_any = False
    for shard in shards:  # the statuses only (cheap): is any file usable at all?
        kept_any = kept_any or any(s["status"] == KEPT for s in load_shard(shard, frames=False)[3])
    if not kept_any:
        for shard in shards:
            for st in load_shard(shard, frames=False)[3]:
                counts[st["status"]] += 1
                skipped.append(st)
        summary = {"files": len(files) + len(unreadable), "kept": 0, "out_dir": str(out),
                   "seconds_total": time.perf_counter() - t0, "chunks_reused": reused,
                   "chunks": len(chunks), "skipped": {k: v for k, v in counts.items() if v},
                   "skipped_files": skipped, "missing_list": str(mpath) if mpath else "",
                   "splits": {}, "ignored_files": ignored, "examples": found["examples"]}
        _print_summary(console, summary, failed=True)
        raise PrepareError(f"none of the {len(files) + len(unreadable)} {dataset} files is usable "
                           f"(reasons above); nothing was written to {out}")
    with StoreWriter(out, layout=LAYOUT, channels=3, class_names=classes, source=f"ntu:{dataset}",
                     prenormalize="3d" if normalize else "none") as w:
        for shard in shards:
            try:
                frames, persons, lengths, status = load_shard(shard)
            except Exception as exc:
                raise RuntimeError(f"cannot read work shard {shard} ({exc}); delete it and run "
                                   "the same command again") from exc
            row = 0
            k = 0
            for st in status:
                counts[st["status"]] += 1
                if st["status"] != KEPT:
                    skipped.append(st)
                    continue
                m, t = int(persons[k]), int(lengths[k])
                kp = frames[row : row + m * t].reshape(m, t, *frames.shape[1:])
                row += m * t
                k += 1
                info = parse_sample_name(st["name"])
                w.add(info.name, kp, info.label, setup=info.setup, camera=info.camera,
                      subject=info.performer, performer=info.performer,
                      replication=info.replication, action=info.action)
                infos.append(info)
        splits = {}
        for bench in DATASET_BENCHMARKS[dataset]:
            train, test = split_indices(infos, bench)
            w.set_split(bench, "train", train)
            w.set_split(bench, "test", test)
            splits[bench] = {"train": len(train), "test": len(test)}
    elapsed = time.perf_counter() - t0
    summary = {
        "dataset": dataset,
        "raw_dirs": raw_dirs,
        "out_dir": str(out),
        "files": len(files) + len(unreadable),
        "kept": counts[KEPT],
        "skipped": {k: v for k, v in counts.items() if k != KEPT and v},
        "skipped_files": skipped,
        "ignored_files": ignored,
        "examples": found["examples"],
        "missing_list": str(mpath) if mpath else None,
        "missing_list_requested": str(missing_list),
        "chunks": len(chunks),
        "chunks_reused": reused,
        "splits": splits,
        "seconds_processing": round(t_proc, 3),
        "seconds_total": round(elapsed, 3),
        "workers": num_workers,
    }
    atomic_write_text(out / "prepare_summary.json", json.dumps(summary, indent=1))
    if not keep_work:
        remove_shards(work, shards)
    else:  # drop stale shards of earlier, different runs
        live = {s.name for s in shards}
        for f in work.glob("chunk-*.npz"):
            if f.name not in live:
                f.unlink()
    _print_summary(console, summary)
    return summary


def _print_summary(console: Any, s: dict, failed: bool = False) -> None:
    if failed:
        console.print(f"[bold red]failed[/]: 0 of {s['files']} files usable; nothing written to "
                      f"{s['out_dir']}")
    else:
        console.print(
            f"[bold green]done[/]: {s['kept']} of {s['files']} files kept -> {s['out_dir']} "
            f"({s['seconds_total']:.1f} s, {s['chunks_reused']}/{s['chunks']} chunks reused)"
        )
    for why, n in sorted(s["skipped"].items()):
        console.print(f"  skipped {n:6d}  {why}")
    for why, n in sorted(s.get("ignored_files", {}).items()):
        eg = ", ".join(s.get("examples", {}).get(why, []))
        console.print(f"  ignored {n:6d}  {why}" + (f" (e.g. {eg})" if eg else ""), markup=False)
    errors = [f for f in s["skipped_files"] if f["status"] != MISSING]
    for f in errors[:20]:
        console.print(f"    {f['name']}: {f['status']}: {f.get('reason', '')}", markup=False)
    if len(errors) > 20:
        console.print(f"    ... {len(errors) - 20} more in prepare_summary.json")
    if s["missing_list"] is None and str(s.get("missing_list_requested", "auto")).lower() == "auto":
        console.print("  [yellow]warning[/]: no missing-skeleton list was found; pass missing_list=PATH")
    for b, parts in s["splits"].items():
        console.print(f"  split {b}: {parts['train']} train / {parts['test']} test")


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        kwargs = OmegaConf.to_container(cfg, resolve=True)
        try:
            run_prepare(**kwargs)
        except PrepareError as exc:  # one line, no traceback; exit status 1
            raise SystemExit(f"last_lite.prepare: error: {exc}") from None

    from last_lite.config_checks import run_cli

    run_cli(_app, "prepare")


if __name__ == "__main__":
    sys.exit(main())
