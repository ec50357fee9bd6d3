"""Loading runs no foreign code: checkpoints with ``weights_only=True``, encoders as safetensors,
no pickle opened unless the user says it is trusted; a wrong config fails before any work."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from reliability_support import REPO, env_for_subprocess

from last_lite.data.sources import get_source
from last_lite.data.sources.pyskl import PYSKLSource, UntrustedPickleError
from last_lite.models import create_model
from last_lite.training.checkpoints import init_from, load_checkpoint, load_model_weights


class Planted:
    """Unpickling this object opens (creates) the marker file: proof that the pickle's code ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_its_code_never_runs(tmp_path):
    marker, ckpt = tmp_path / "code-ran", tmp_path / "evil.ckpt"
    model = create_model("last_lite_nano", num_classes=4)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model_spec": Planted(marker)}}, ckpt)
    torch.load(ckpt, weights_only=False)  # positive control: a plain load runs the planted code
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match=r"weights-only checkpoint: it holds a Python object \(io.open\)") as refused:
        load_checkpoint(ckpt)
    assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice to unpickle it anyway
    with pytest.raises(ValueError, match="weights-only"):
        load_model_weights(ckpt)
    with pytest.raises(ValueError, match="weights-only"):
        init_from(model, ckpt)
    from last_lite.evaluate import load_for_evaluation

    with pytest.raises(ValueError, match="weights-only"):
        load_for_evaluation(str(ckpt))
    # Lightning's resume path, as run_phase calls it (ckpt_path=..., weights_only=True)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        trainer.fit(_Tiny(), train_dataloaders=data, ckpt_path=ckpt, weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"# a README, not a checkpoint\n", "truncated"])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, content):
    ckpt = tmp_path / "run.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"model.w": torch.ones(64)}}, ckpt)
        content = ckpt.read_bytes()[:200]
    ckpt.write_bytes(content)
    with pytest.raises(ValueError, match=r"run.ckpt as a weights-only checkpoint: not a PyTorch checkpoint, or a damaged one"):
        load_checkpoint(ckpt)


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_pyskl_pickle_runs_no_code_unless_the_user_says_it_is_trusted(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "ntu60_3danno.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"split": {}, "annotations": [], "planted": Planted(marker)}, fh)
    with pytest.raises(UntrustedPickleError, match="trusted=True"):
        PYSKLSource(path)
    with pytest.raises(UntrustedPickleError):
        get_source("pyskl", path=path)
    cfg = OmegaConf.create({"_target_": "last_lite.data.sources.pyskl.PYSKLSource", "path": str(path)})
    with pytest.raises(Exception, match="trusted=True"):  # Hydra wraps it in InstantiationException
        instantiate(cfg)
    assert not marker.exists()
    with pytest.raises(ValueError, match="no annotations"):  # trusted: the user's call; code runs
        PYSKLSource(path, trusted=True).write(tmp_path / "store", "k")
    assert marker.exists()


def test_a_config_file_cannot_mark_a_pyskl_pickle_as_trusted(tmp_path):
    """A run folder's config.yaml, or a checkpoint's saved data config, is anyone's file: export and
    evaluate ignore its `trusted: true`; only the command line can say the pickle is trusted."""
    from last_lite.evaluate import resolve_data
    from last_lite.export.common import build_datamodule, data_config

    marker, path = tmp_path / "code-ran", tmp_path / "ntu60_3danno.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"split": {}, "annotations": [], "planted": Planted(marker)}, fh)
    data = {"_target_": "last_lite.data.datamodule.SkeletonDataModule", "split": "xsub",
            "source": {"_target_": "last_lite.data.sources.pyskl.PYSKLSource", "path": str(path), "trusted": True}}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"data": data}))
    cfg = data_config(OmegaConf.create({"data_config": None, "data_overrides": {"num_workers": 0}}), tmp_path)
    assert cfg.source.trusted is False
    with pytest.raises(UntrustedPickleError, match=r"\+data_overrides\.source\.trusted=true") as refused:
        build_datamodule(cfg)
    assert str(path) in str(refused.value)
    assert not marker.exists()
    cfg = data_config(OmegaConf.create({"data_config": None, "data_overrides": {"source": {"trusted": True}}}),
                      tmp_path)
    assert cfg.source.trusted is True  # the user's word, on the command line
    # evaluate, from the checkpoint's saved data config (its own record left as it was)
    run = OmegaConf.create({"ckpt": str(tmp_path / "x.ckpt"), "data": {}})
    resolve_data(run, {"data_spec": {"data_config": data}})
    assert run.data.source.trusted is False and data["source"]["trusted"] is True
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    # positional arguments: PYSKLSource(path, trusted) with no key named `trusted` to distrust
    {"_target_": "last_lite.data.sources.pyskl.PYSKLSource", "_args_": ["PICKLE", True]},
    # a resolver builds the node only when the config is resolved, after any check of its keys
    "${oc.create:'{_target_: last_lite.data.sources.pyskl.PYSKLSource, path: PICKLE, trusted: true}'}",
    {"_target_": "last_lite.data.sources.pyskl.PYSKLSource", "path": "PICKLE", "_partial_": True},
])
def test_a_saved_data_config_cannot_hide_code_from_the_checks(tmp_path, source):
    from omegaconf.errors import OmegaConfBaseException

    from last_lite.config_checks import ConfigError
    from last_lite.evaluate import resolve_data

    marker, path = tmp_path / "code-ran", tmp_path / "ntu60_3danno.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"split": {}, "annotations": [], "planted": Planted(marker)}, fh)
    source = OmegaConf.to_container(OmegaConf.create({"s": source}))["s"]  # a copy
    if isinstance(source, dict):
        source = {k: ([str(path) if a == "PICKLE" else a for a in v] if k == "_args_" else
                      str(path) if v == "PICKLE" else v) for k, v in source.items()}
    else:
        source = source.replace("PICKLE", str(path))
    data = {"_target_": "last_lite.data.datamodule.SkeletonDataModule", "split": "xsub", "source": source}
    run = OmegaConf.create({"ckpt": str(tmp_path / "x.ckpt"), "data": {}})
    with pytest.raises(ConfigError, match="data.source.* holds .*data, not code"):
        resolve_data(run, {"data_spec": {"data_config": data}})
    try:  # export resolves first, then checks what the resolution built
        from last_lite.export.common import build_datamodule, data_config

        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"data": data}))
        build_datamodule(data_config(OmegaConf.create({"data_config": None, "data_overrides": {}}), tmp_path))
    except (ConfigError, UntrustedPickleError, OmegaConfBaseException):
        pass
    assert not marker.exists()


def _calls(text: str, pattern: str) -> list[str]:
    """The full text of every call whose start matches ``pattern`` (ending in "("), parentheses matched."""
    out = []
    for m in re.finditer(pattern, text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.start():i])
    return out


def test_no_other_loader_in_the_package_can_unpickle():
    """torch.load and Lightning's ckpt_path always with weights_only=True; pickle only in PYSKL."""
    checked = 0
    for path in sorted((REPO / "last_lite").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text(encoding="utf-8")
        assert "allow_pickle=True" not in text and "weights_only=False" not in text, rel
        for call in _calls(text, r"torch\.load\("):
            assert "weights_only=True" in call, f"{rel}: {call}"
            checked += 1
        for call in _calls(text, r"\.(?:fit|test|validate|predict)\("):
            if "ckpt_path=" in call:
                assert "weights_only=True" in call, f"{rel}: {call}"
                checked += 1
        if re.search(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(", text):
            assert rel == "last_lite/data/sources/pyskl.py", rel
    assert checked >= 3  # checkpoints.load_checkpoint, runner's fit and test


def test_encoders_are_written_as_safetensors_and_read_without_pickle(tmp_path):
    from safetensors import safe_open

    from last_lite.training.path_c.maskclr import save_encoder

    model = create_model("last_lite_nano", num_classes=4)
    path = save_encoder(model, tmp_path / "encoder.safetensors", metadata={"model": "last_lite_nano"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["model"] == "last_lite_nano"
    weights = load_model_weights(path)
    student = create_model("last_lite_nano", num_classes=7)
    report = init_from(student, path)
    assert weights and report["loaded"] and all(not n.startswith("classifier") for n in report["loaded"])
    # a truncated or missing file is named, not a bare safetensors error
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"cannot load {truncated} as safetensors"):
        init_from(student, truncated)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        init_from(student, tmp_path / "absent.safetensors")


# ------------------------------------------------------------------------------------------------
# configuration errors: Hydra's message, before any work

def test_a_wrong_group_option_fails_before_any_work_with_hydras_message(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "last_lite.train", "model=nope", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "Could not find 'model/nope'" in result.stderr
    assert "Available options in 'model'" in result.stderr and "last_lite_small" in result.stderr
    assert not run_dir.exists()  # no folder, no config.yaml, no data cache, no checkpoint


@pytest.mark.parametrize("override, message", [
    ("data.source.train_per_clas=8", "train_per_clas"),   # a typo inside a group's config
    ("max_epochs=3", "max_epochs"),                        # a key at the wrong level
    ("trainer=ddp_gpu", "Could not find 'trainer/ddp_gpu'"),
])
def test_unknown_keys_and_options_are_refused_at_composition(override, message):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, MissingConfigException), match=re.escape(message)):
            compose(config_name="train", overrides=[override])
