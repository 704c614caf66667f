"""Hostile checkpoints run nothing; run.json's checksum is the model file's; configs fail before work, naming the key."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from relyhelp import REPO, ad_training_set, head_volume, tiny_models, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.cli.main import cli
from medcnn.engine.checkpoint import FORMAT, load_checkpoint
from medcnn.errors import InputError
from medcnn.pipelines import available, get_pipeline


class Payload:
    """Unpickling this creates ``marker`` (``os.mkdir``): the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def _hostile_files(tmp_path: Path, marker: Path) -> list[Path]:
    ck = {"format": FORMAT, "version": 1, "task": "segmentation", "state_dict": {}, "extra": Payload(marker)}
    zip_ck = tmp_path / "hostile_zip.pt"
    torch.save(ck, zip_ck)
    legacy = tmp_path / "hostile_legacy.pt"
    torch.save(ck, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "hostile_raw.pt"
    raw.write_bytes(pickle.dumps(ck))
    return [zip_ck, legacy, raw]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))  # the payload works when unpickled normally
    assert (tmp_path / "control").is_dir()
    from medcnn.predictor import load_model

    for path in _hostile_files(tmp_path, marker):
        for loader in (load_checkpoint, load_model):
            with pytest.raises(InputError, match=r"refused.*pickled Python objects") as err:
                loader(path)
            assert path.name in str(err.value) and "\n" not in str(err.value)
        assert not marker.exists(), f"{path.name}: unpickling ran the payload"


def test_hostile_model_through_the_cli_and_promptable_loader(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = _hostile_files(tmp_path, marker)[0]
    scan = write_nifti(tmp_path / "scans" / "a.nii.gz", head_volume()[0])
    res = CliRunner().invoke(cli, ["predict", "alzheimer", str(scan.parent), "-o", str(tmp_path / "o"), "--model", str(evil)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "hostile_zip.pt" in res.output and "refused" in res.output
    from medcnn.prompt import PromptableSegmenter

    with pytest.raises(InputError, match="refused"):
        PromptableSegmenter.from_pretrained(evil)
    assert not marker.exists()


def test_checkpoints_load_with_weights_only_and_map_location(tmp_path: Path, monkeypatch) -> None:
    """Every torch.load in medcnn asks for weights_only=True and a map_location (guards against regressions)."""
    ck = tiny_models("alzheimer", tmp_path)[0]
    calls: list[dict] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from medcnn.predictor import load_model

    load_model(ck)
    load_checkpoint(ck, map_location="cpu")
    assert calls and all(c.get("weights_only") is True and c.get("map_location") is not None for c in calls), calls


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _recorded_models(info: Any) -> list[dict]:
    """Every ``{path, sha256}`` record inside run.json's ``model`` section (one or several models)."""
    if isinstance(info, dict):
        here = [info] if "sha256" in info and "path" in info else []
        return here + [m for v in info.values() for m in _recorded_models(v)]
    return []


@pytest.mark.parametrize("pipeline", available())
def test_run_json_records_the_model_sha256(pipeline: str, tmp_path: Path) -> None:
    models = tiny_models(pipeline, tmp_path / "models")
    if models is None:
        pytest.skip(f"{pipeline}: no tiny model recipe in relyhelp.py")
    from badinputs import CORPORA

    corpus, _ = CORPORA[pipeline](tmp_path / "data")
    good = [p for item, p in corpus if item.ok][:1]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["predict", pipeline, *map(str, good), "-o", str(out), "--device", "cpu",
                                   *[a for m in models for a in ("--model", str(m))]])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    recorded = _recorded_models(run["model"])
    assert {Path(r["path"]).resolve() for r in recorded} == {m.resolve() for m in models}
    for r in recorded:
        assert r["sha256"] == _sha256(r["path"]), f"run.json sha256 of {r['path']} is not the file's"
    assert get_pipeline(pipeline).name == run["pipeline"]


@pytest.mark.parametrize(
    "setting,pattern",
    [
        ("train.lrr=0.1", r"unknown config key 'train\.lrr'"),
        ("train.epochs=many", r"config key 'train\.epochs': expected integer"),
        ("preprocess.size=12", r"config key 'preprocess\.size': expected"),
        ("model.name=resnet999", r"config key 'model\.name': unknown model 'resnet999'"),
        ("data.source=/no/such/folder", r"config key 'data\.source': no such file"),
    ],
)
def test_config_errors_name_the_key_before_any_work(setting: str, pattern: str, tmp_path: Path) -> None:
    manifest = ad_training_set(tmp_path / "data", n=2)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(REPO / "configs" / "alzheimer.yaml"), "--set", f"data.source={manifest}",
                                   "--set", setting, "-o", str(run)])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert re.search(pattern, errors[0]), errors[0]
    assert not run.exists(), "work started (run folder created) before the config was validated"
