"""Configuration checks shared by every command (no torch import).

- :func:`parse_bool`: a strict boolean (``True``/``False`` or the strings true/false/yes/no/1/0;
  anything else is an error). ``bool("false")`` is True, so no security flag is read with ``bool()``.
- :func:`check_targets` / :func:`safe_data_config`: a config read from a file (a run folder's
  ``config.yaml``) is data, not code: every ``_target_`` in it must be one of the project's own
  classes (an allow-list), checked before anything is instantiated.
- :func:`validate_run_config`: the values a command will use (``data.clip_len``, ``optim.lr``,
  ``trainer.max_epochs``, ...) checked once, before the run folder, the data cache or the store
  exist, with a message naming the key, what it must be and what it got.
- :func:`did_you_mean`: the closest known keys for a misspelt one.
- :func:`legacy_overrides`: former spellings of renamed config groups on a command line
  (``distill=small`` -> ``kd=small``, ``export=onnx_int8`` -> ``backend=onnx_int8``,
  ``pretrain.x=1`` -> ``maskclr.x=1``, ``pipeline=ntu60_xsub`` -> ``tree=ntu60_xsub``,
  ``student=x`` -> ``model@student=x``) rewritten with a warning;
  :func:`current_spelling` / :func:`former_keys` for readers of run folders written before.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping

__all__ = ["ConfigError", "DATA_TARGETS", "RENAMED_CHOICES", "RENAMED_GROUPS", "check_targets",
           "current_spelling", "did_you_mean", "former_keys", "legacy_overrides", "parse_bool",
           "safe_data_config", "validate_run_config"]

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value the project refuses (the message names the key and the fix)."""


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_bool(value: Any, name: str) -> bool:
    """``value`` as a boolean, strictly: a bool, the integers 0/1, or one of the strings
    true/false/yes/no/on/off/1/0 (any case, surrounding blanks ignored). Anything else
    (``None``, ``"maybe"``, ``2``, a list) raises :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


# ------------------------------------------------------------------------------------------------
# _target_ allow-lists
# ------------------------------------------------------------------------------------------------
#: What a data config read from a file may build: the DataModule and the project's sources.
DATA_TARGETS = frozenset({
    "last_lite.data.datamodule.SkeletonDataModule",
    "last_lite.data.sources.synthetic.SyntheticSource",
    "last_lite.data.sources.nw_ucla.NWUCLASource",
    "last_lite.data.sources.custom.CustomSource",
    "last_lite.data.sources.pyskl.PYSKLSource",
    "last_lite.data.sources.ctrgcn.CTRGCNSource",
    "last_lite.data.sources.ntu.NTUSource",
})

_HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
# Hydra keys a config read from a file may not hold: positional arguments pass a source's options
# (a pickle's ``trusted``) past every check by name, ``_partial_`` builds a callable
_REFUSED_FROM_FILES = ("_args_", "_partial_")
# ``${name:...}``: a resolver runs when the config is resolved, after these checks
# (``${oc.create:...}`` could build an unchecked ``_target_``); ``${a.b}`` references stay allowed
_RESOLVER = re.compile(r"\$\{\s*[\w.\-]+\s*:")


def _targets(node: Any, where: str) -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, path)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _hidden_code(node: Any, where: str) -> Iterable[tuple[str, str]]:
    """(path, what) of what could build or run something the ``_target_`` check never sees."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key in _REFUSED_FROM_FILES:
                yield path, f"Hydra's {key}"
            elif isinstance(key, str) and _RESOLVER.search(key):
                yield path, "a resolver interpolation in a key"
            else:
                yield from _hidden_code(value, path)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _hidden_code(value, f"{where}[{i}]")
    elif isinstance(node, str) and _RESOLVER.search(node):
        yield where, f"a resolver interpolation ({node[:80]!r})"


def check_targets(node: Any, allowed: Callable[[str], bool] | Iterable[str], source: str,
                  where: str = "") -> None:
    """Refuse (``ConfigError``) any ``_target_`` anywhere in ``node`` (a plain container) that
    ``allowed`` does not accept, and anything that would build or run code past that check
    (``_args_``, ``_partial_``, a ``${resolver:...}`` interpolation); ``source`` names the file for
    the message."""
    for path, what in _hidden_code(node, where):
        raise ConfigError(f"{source}: {path} holds {what}; a config read from a file is data, not code, "
                          f"so it may only name the project's classes by _target_ and their options by key")
    accept = allowed if callable(allowed) else frozenset(allowed).__contains__
    for path, target in _targets(node, where):
        if not isinstance(target, str) or not accept(target):
            raise ConfigError(f"{source}: {path} = {target!r} is not one of the project's classes; "
                              f"a config read from a file is data, not code, so only these are "
                              f"built: {', '.join(sorted(DATA_TARGETS))}")


def distrust(data: Any, command_line: Any = None) -> None:
    """Set every ``trusted`` flag (a PYSKL source's: may its pickle be opened?) in ``data``, a plain
    data config read from a file, to False in place, unless ``command_line`` (the same layout, the
    user's overrides) sets it at the same place. Anyone can write a run folder's config.yaml or a
    checkpoint's saved config; only the user can say a pickle comes from a source they trust."""
    if isinstance(data, dict):
        given = command_line if isinstance(command_line, dict) else {}
        for key, value in data.items():
            if key == "trusted":
                data[key] = given.get(key, False)
            else:
                distrust(value, given.get(key))
    elif isinstance(data, list):
        given = command_line if isinstance(command_line, list) else []
        for i, value in enumerate(data):
            distrust(value, given[i] if i < len(given) else None)


def safe_data_config(data: Any, source: str) -> dict:
    """A ``data`` config read from ``source`` (a run folder's config.yaml) as a plain dict whose
    every ``_target_`` is in :data:`DATA_TARGETS`; the top level must be the DataModule."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        try:
            data = OmegaConf.to_container(data, resolve=True)
        except Exception as exc:  # an interpolation that does not resolve
            raise ConfigError(f"{source}: the data config does not resolve: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the data config must be a mapping, got {type(data).__name__}")
    check_targets(data, DATA_TARGETS, source, "data")
    if data.get("_target_") != "last_lite.data.datamodule.SkeletonDataModule":
        raise ConfigError(f"{source}: data._target_ must be last_lite.data.datamodule.SkeletonDataModule, "
                          f"got {data.get('_target_')!r}")
    return dict(data)


# ------------------------------------------------------------------------------------------------
# did you mean
# ------------------------------------------------------------------------------------------------
def did_you_mean(key: str, known: Iterable[str], n: int = 3) -> str:
    """``" (did you mean: a, b?)"`` for the closest of ``known`` to ``key``, or ``""``."""
    known = list(dict.fromkeys(str(k) for k in known))
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    if not close and "." in key:  # compare the last part with the last parts of known keys
        head, _, tail = key.rpartition(".")
        tails = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == head}
        close = [tails[t] for t in difflib.get_close_matches(tail, list(tails), n=n, cutoff=0.6)]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a (plain or OmegaConf) mapping, without resolving values."""
    from omegaconf import DictConfig

    out: list[str] = []
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else (cfg or {}).items()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        out.append(path)
        if isinstance(value, (Mapping, DictConfig)):
            out.extend(config_keys(value, path))
    return out


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
def _get(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value):
    return _is_int(value) and value >= 1, "a positive integer"


def _non_negative_int(value):
    return _is_int(value) and value >= 0, "a non-negative integer"


def _positive_number(value):
    return _is_number(value) and value > 0, "a positive finite number"


def _non_negative_number(value):
    return _is_number(value) and value >= 0, "a non-negative finite number"


def _fraction(value):
    return _is_number(value) and 0 <= value < 1, "a number in [0, 1)"


def _probability(value):
    return _is_number(value) and 0 <= value <= 1, "a number in [0, 1]"


def _boolean(value):
    return isinstance(value, bool), "true or false"


def _max_epochs(value):
    # -1 is Lightning's "no limit"; it is refused here: a run must end (and 0 trains nothing).
    return _is_int(value) and value >= 1, "a positive integer (0 would record an untrained model)"


def _optional_positive_int(value):
    return value is None or (_is_int(value) and value >= 1), "null or a positive integer"


def _seed(value):
    return _is_int(value) and 0 <= value < 2 ** 32, "an integer in [0, 2^32)"


#: key -> check, for keys present in the composed config (absent keys are not required here).
VALUE_CHECKS: dict[str, Callable[[Any], tuple[bool, str]]] = {
    "seed": _seed,
    "threads": _optional_positive_int,
    "data.clip_len": _positive_int,
    "data.batch_size": _positive_int,
    "data.num_workers": _non_negative_int,
    "data.max_persons": _optional_positive_int,  # null: the most persons any clip holds
    "data.repeat": _positive_int,
    "data.val_fraction": _fraction,
    "data.seed": _seed,
    "data.test_clips": _positive_int,
    "data.unlabelled": _boolean,
    "data.train_transform.test_crop_ratio": _probability,
    "optim.lr": _positive_number,
    "optim.weight_decay": _non_negative_number,
    "optim.momentum": _probability,
    "trainer.max_epochs": _max_epochs,
    "trainer.limit_train_batches": lambda v: (v is None or (_is_number(v) and v > 0),
                                              "null, a positive fraction or a positive batch count"),
    "trainer.accumulate_grad_batches": _positive_int,
    "module.label_smoothing": _fraction,
    "module.max_nonfinite_steps": _non_negative_int,
    "test_clips": _positive_int,
    "parity.samples": _positive_int,
    "eval_batch_size": _positive_int,
    "latency.repeats": _positive_int,
    "latency.warmup": _non_negative_int,
    "num_workers": _optional_positive_int,
    "chunk_size": _positive_int,
    "limit": _optional_positive_int,
    "kd.alpha": _probability,
    "kd.tau": _positive_number,
}

_ABSENT = object()

_CHOICES = {
    "data.val_split": ("holdout", "test", "split"),
    "data.on_bad_values": ("drop", "error"),
    "selection": ("auto", "last", "best_val"),
}


def validate_run_config(cfg: Any, command: str) -> None:
    """Check the values ``command`` will use; raise :class:`ConfigError` listing every bad one
    (``data.clip_len must be a positive integer, got 0``). Interpolations are resolved first, so
    an unresolvable value is reported too. Keys absent from the config are not checked."""
    from omegaconf import DictConfig, OmegaConf

    problems: list[str] = []
    if isinstance(cfg, DictConfig):
        # only the checked keys are resolved (a command's config may hold nodes it never resolves)
        plain: dict = {}
        for key in [*VALUE_CHECKS, *_CHOICES, "data.source.trusted"]:
            try:
                value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=True)
            except Exception as exc:  # noqa: BLE001 -- reported with the key
                problems.append(f"{key} does not resolve: {str(exc).splitlines()[0]}")
                continue
            if value is _ABSENT:
                continue
            if isinstance(value, DictConfig) or OmegaConf.is_list(value):
                value = OmegaConf.to_container(value, resolve=True)
            node = plain
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
    else:
        plain = dict(cfg)
    for key, check in VALUE_CHECKS.items():
        found, value = _get(plain, key)
        if not found:
            continue
        ok, what = check(value)
        if not ok:
            problems.append(f"{key} must be {what}, got {value!r}")
    for key, choices in _CHOICES.items():
        found, value = _get(plain, key)
        if found and value not in choices:
            problems.append(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    found, source = _get(plain, "data.source")
    if found and isinstance(source, Mapping) and "trusted" in source:
        try:
            parse_bool(source["trusted"], "data.source.trusted")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"{command}: invalid config: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Hydra hooks: the check before the run folder exists, and "did you mean" for override keys
# ------------------------------------------------------------------------------------------------
def _check_with_hydra_config(config: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(config)  # ${hydra:...} resolves (run_job sets it again)
    command = str(OmegaConf.select(config, "hydra.job.config_name", default=None)
                  or config.get("task_name") or "command")
    try:
        validate_run_config(config, command)
    except ConfigError as exc:
        # Hydra turns a callback's exception into a warning and runs on: stop here, one line
        raise SystemExit(f"error: {exc}") from None


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - hydra is a dependency of every command
    _Callback = object


class ConfigCheck(_Callback):
    """A Hydra callback (conf/hydra/default.yaml, conf/export.yaml, conf/prepare.yaml): the
    composed config is validated before Hydra makes the run folder (a sweep: its base config
    here, each job's values again when the job starts)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _check_with_hydra_config(config)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _check_with_hydra_config(config)


def _override_keys(argv: list[str]) -> tuple[list[str], list[str]]:
    """(group choices ``group=option``, dotted keys of ``a.b=v`` overrides) of a command line."""
    groups, keys = [], []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.split(".")[0].lstrip("+~") == "hydra":
            continue  # Hydra's own settings
        if key.startswith(("+", "~")):
            continue  # appending or deleting: the user says the key is new or going
        (keys if "." in key else groups).append(arg if "." not in key else key)
    return groups, keys


def override_hints(config_name: str, argv: list[str]) -> list[str]:
    """For each ``key=value`` of ``argv`` naming no key of the composed config, a line with the
    closest known keys. Composition errors of the hint itself are ignored (it is only a hint)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups, keys = _override_keys(argv)
    if not keys and not groups:
        return []
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    known: list[str] = []
    for attempt in ([g for g in groups], []):
        try:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=conf, version_base="1.3"):
                cfg = compose(config_name, overrides=[g for g in attempt if "=" in g and "." not in g.split("=")[0]])
            known = [k for k in config_keys(cfg) if not k.startswith("hydra")]
            break
        except Exception:  # noqa: BLE001 -- a bad group option: Hydra's own message said so
            continue
    if not known:
        return []
    # a group choice names a key (``model=``) or a conf/ group folder (``experiment=``, a
    # ``# @package _global_`` preset; ``model@teacher=``, a group under another package)
    top = {k for k in known if "." not in k} | {p.name for p in Path(conf).iterdir() if p.is_dir()}
    lines = []
    for key in keys:
        if key in known:
            continue
        lines.append(f"hint: {key} is not a key of the {config_name} config{did_you_mean(key, known)}")
    for arg in groups:
        key = arg.split("=", 1)[0].split("@", 1)[0]
        if key not in top and key != "hydra":
            lines.append(f"hint: {key} is not a key of the {config_name} config{did_you_mean(key, top)}")
    return lines


# ------------------------------------------------------------------------------------------------
# Former spellings of renamed config groups
# ------------------------------------------------------------------------------------------------
#: command -> {former group: group}. Renamed so that no group shares its name with a root config
#: (conf/distill.yaml beside conf/distill/ ...). The group's keys, choices and ``+``/``++``/``~``
#: forms are all rewritten: ``distill.alpha=0.5`` -> ``kd.alpha=0.5``, ``~export`` -> ``~backend``.
RENAMED_GROUPS: dict[str, dict[str, str]] = {
    "distill": {"distill": "kd"},
    "export": {"export": "backend"},
    "pretrain": {"pretrain": "maskclr"},
    "pipeline": {"pipeline": "tree"},
}
#: Keys that say where and how a run executed, not what it computed: the pipeline's adoption of a
#: run, a resumed run's check of its folder and summarize's cells of seeds leave them out of their
#: comparisons (``logger``: where the curves are written).
EXECUTION_KEYS = ("hydra", "paths", "threads", "ckpt_path", "logger")
EXECUTION_SUFFIXES = ("cache_dir",)
#: torch.compile computes the same function as eager mode, faster where it pays
EXECUTION_OPTIONS = ("teacher.compile", "module.compile_features")


def is_execution_key(key: str) -> bool:
    key = key.lstrip("+~").partition("=")[0]
    return key.split(".")[0] in EXECUTION_KEYS or key.endswith(EXECUTION_SUFFIXES) or key in EXECUTION_OPTIONS


def without_execution_keys(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` (plain containers) without the keys of :func:`is_execution_key`, at any depth (a
    group left empty by that goes too: ``teacher: {compile: true}`` is ``{}``)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if is_execution_key(key):
            continue
        if isinstance(v, Mapping) and v:
            v = without_execution_keys(v, key)
            if not v:
                continue
        out[k] = v
    return out


def flatten_config(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (plain containers) as ``{"dotted.key": value}``."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], dict, dict]:
    """The dotted keys whose values differ between two nested configs (a key only one has counts),
    sorted, with both flattened configs."""
    a, b = flatten_config(dict(old)), flatten_config(dict(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")), a, b


def computed_differences(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 12) -> list[str]:
    """The keys, execution keys aside, where two resolved run configs differ (``key: saved vs now``):
    what would make a resumed run a mix of two experiments (:func:`computed_difference_keys`)."""
    keys, a, b = computed_difference_keys(saved, current)
    return [f"{k}: {a.get(k, '<absent>')!r} vs now {b.get(k, '<absent>')!r}" for k in keys][:limit]


def computed_difference_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], dict, dict]:
    """The dotted keys, execution keys aside, where two resolved run configs differ, with both
    flattened configs. Paths inside the saved run folder are read as inside the current one (a
    folder moved or copied elsewhere resumes)."""
    a, b = flatten_config(dict(saved)), flatten_config(dict(current))
    old_dir, new_dir = a.get("paths.output_dir"), b.get("paths.output_dir")
    if isinstance(old_dir, str) and isinstance(new_dir, str) and old_dir != new_dir:  # a moved run folder
        a = {k: new_dir + v[len(old_dir):] if isinstance(v, str) and (v == old_dir or v.startswith(old_dir + "/"))
             else v for k, v in a.items()}
    keys, a, b = differing_keys(a, b)  # flat already: flattening again keeps them as they are
    return [k for k in keys if not is_execution_key(k) and not _auto_resumes_as_saved(k, b.get(k))
            and not _same_file(a.get(k), b.get(k))], a, b


def _same_file(a: Any, b: Any) -> bool:
    """Two path values naming one existing file or folder (a run folder reached through a link,
    a checkpoint given relative to the working directory once and absolute the next time)."""
    try:
        return isinstance(a, str) and isinstance(b, str) and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _auto_resumes_as_saved(key: str, value: Any) -> bool:
    """``precision: auto`` resumes in the precision the checkpoint was trained in
    (last_lite/training/precision.py), so it agrees with whatever the saved run used."""
    return key.rsplit(".", 1)[-1] == "precision" and value == "auto"


#: command -> {former group: the group@package it became}: only the choice (``student=x``) is
#: rewritten, since ``student.*`` still names the keys of the model chosen for ``student``.
RENAMED_CHOICES: dict[str, dict[str, str]] = {
    "distill": {"student": "model@student", "teacher": "model@teacher"},
}


def current_spelling(override: str, command: str | None) -> str:
    """``override`` (``key=value``, ``+key=value``, ``~key``) of ``command``'s config in today's
    spelling; unchanged when it is current (or not an override: flags, ``-cn distill``)."""
    groups, choices = RENAMED_GROUPS.get(command or "", {}), RENAMED_CHOICES.get(command or "", {})
    if not (groups or choices) or override.startswith("-"):
        return override
    body = override.lstrip("+~")
    prefix = override[:len(override) - len(body)]
    key, eq, value = body.partition("=")
    if not eq and "~" not in prefix:  # a bare word is no override (e.g. the value of -cn)
        return override
    head, dot, rest = key.partition(".")
    if head in groups:
        return f"{prefix}{groups[head]}{dot}{rest}{eq}{value}"
    if eq and key in choices:
        return f"{prefix}{choices[key]}={value}"
    return override


def former_keys(key: str, command: str | None) -> list[str]:
    """The former spellings of ``key`` (a dotted config key or a group) in ``command``'s config,
    for reading run folders written before a rename: ``kd.alpha`` -> ``["distill.alpha"]``."""
    head, dot, rest = key.partition(".")
    out = [f"{old}{dot}{rest}" for old, new in RENAMED_GROUPS.get(command or "", {}).items() if new == head]
    out += [old for old, new in RENAMED_CHOICES.get(command or "", {}).items() if new == key]
    return out


def legacy_overrides(argv: list[str], command: str) -> list[str]:
    """``argv`` with the former spellings of ``command``'s renamed groups rewritten (a warning
    naming the new spelling for each): ``distill=small`` -> ``kd=small``, ``export=onnx_int8`` ->
    ``backend=onnx_int8``, ``pretrain.x=1`` -> ``maskclr.x=1``, ``pipeline.force=[teacher]`` ->
    ``tree.force=[teacher]``, ``student=x`` -> ``model@student=x``."""
    out = []
    for arg in argv:
        new = current_spelling(arg, command)
        if new != arg:
            log.warning("%s is the former spelling of %s; rewritten", arg, new)
        out.append(new)
    return out


def run_cli(main: Callable[[], Any], config_name: str) -> Any:
    """Run a Hydra ``main`` with the former spellings of renamed groups rewritten
    (:func:`legacy_overrides`); when it fails on the command line, print "did you mean" hints for
    override keys the config does not have."""
    import sys

    sys.argv[1:] = legacy_overrides(sys.argv[1:], config_name)
    try:
        return main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            for line in override_hints(config_name, sys.argv[1:]):
                print(line, file=sys.stderr)
        raise
    except Exception:
        for line in override_hints(config_name, sys.argv[1:]):
            print(line, file=sys.stderr)
        raise
