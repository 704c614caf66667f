"""Training, checkpoint, config and memory-guard faults (issue: reliability round 2).

A finished run folder is not silently replaced; every allocation that scales with the model's grid is
checked against the memory limit first; broken checkpoints and bad configs give one clear line naming
the file or key; NaN/Inf network outputs make a case an error; both dataset.json forms train.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from relyhelp import AD_TRAIN_TINY, REPO, TINY_SETTINGS, ad_training_set, head_volume, tiny_checkpoint, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

import medcnn
from medcnn.cli.main import cli
from medcnn.engine.checkpoint import load_checkpoint
from medcnn.errors import ConfigError, InputError
from medcnn.io.memory import ENV_VAR

AD_CONFIG = REPO / "configs" / "alzheimer.yaml"
BT_CONFIG = REPO / "configs" / "brain_tumor.yaml"


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch) -> None:
    """Start from the default memory limit; undo whatever a test (or ``medcnn --max-memory``) sets."""
    monkeypatch.setenv(ENV_VAR, "")


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def _one_clear_line(res, *needles: str) -> str:
    """The single ``error:`` line of a failed CLI call, holding every needle, without a traceback."""
    assert res.exit_code == 1, res.output
    errors = _errors(res.output)
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def ad_manifest(tmp_path_factory) -> Path:
    return ad_training_set(tmp_path_factory.mktemp("ad_train"))


@pytest.fixture(scope="module")
def finished_run(ad_manifest: Path, tmp_path_factory) -> Path:
    """A tiny one-epoch classification run (best.pt, last.pt, result.json); copy it before changing it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest)), "-o", str(run)])
    assert res.exit_code == 0, res.output
    return run


def _ad(manifest: Path, *extra: str) -> list[str]:
    return [f"data.source={manifest}", *AD_TRAIN_TINY, "train.epochs=1", *extra]


# ------------------------------------------------------------------ 3: a finished run is not replaced


def test_train_into_a_finished_run_refuses_without_overwrite(ad_manifest: Path, finished_run: Path,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {n: (run / n).read_bytes() for n in ("best.pt", "last.pt")}
    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest)), "-o", str(run)])
    _one_clear_line(res, str(run), "best.pt", "--resume", "--overwrite")
    assert {n: (run / n).read_bytes() for n in before} == before, "the finished run's checkpoints were touched"

    only_last = tmp_path / "killed"  # a run killed before its first validation: last.pt alone
    only_last.mkdir()
    shutil.copy(finished_run / "last.pt", only_last / "last.pt")
    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest)), "-o", str(only_last)])
    _one_clear_line(res, "last.pt", "--resume")

    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest)), "-o", str(run), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").read_bytes() != before["best.pt"], "--overwrite did not train a new model"
    assert json.loads((run / "result.json").read_text())["best_epoch"] == 1

    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest)), "-o", str(run), "--resume",
                                   "--overwrite"])
    assert res.exit_code == 2 and "--resume" in res.output and "--overwrite" in res.output


def test_library_train_refuses_a_finished_run_too(ad_manifest: Path, finished_run: Path, tmp_path: Path) -> None:
    from medcnn.engine import train

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with pytest.raises(ConfigError, match=r"best\.pt.*resume.*overwrite"):
        train(AD_CONFIG, _ad(ad_manifest), run)


# ----------------------------------------------------------- 11: memory guard on the model's grid


def _coarse_scan(folder: Path, n: int, spacing: float) -> Path:
    vol, aff = head_volume((n, n, n), spacing=spacing)
    return write_nifti(folder / f"coarse_{n}_{int(spacing)}mm.nii.gz", vol, aff)


def test_resampling_to_the_model_grid_is_checked_before_allocating(tmp_path: Path, monkeypatch) -> None:
    """30^3 voxels of 30 mm load in 0.2 MiB but become 150^3 voxels (13 MiB) on the tiny model's 6 mm grid."""
    from medcnn.predictor import load_model

    scan = _coarse_scan(tmp_path / "scans", 30, 30.0)
    model = load_model(tiny_checkpoint("alzheimer", tmp_path / "ad.pt"))
    img = medcnn.load(scan, max_memory="4M")
    assert model.predict_proba(img).shape == (2,)  # the default limit: fine
    monkeypatch.setenv(ENV_VAR, "4M")
    with pytest.raises(InputError, match=r"coarse_30_30mm\.nii\.gz: .*model's grid.*150x150x150.*limit of 4 MiB") as err:
        model.predict_proba(img)
    assert "\n" not in str(err.value)

    res = CliRunner().invoke(cli, ["--max-memory", "4M", "predict", "alzheimer", str(scan.parent), "-o",
                                   str(tmp_path / "out"), "--model", str(tmp_path / "ad.pt"), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["error"] and "model's grid" in rows[0]["error"], rows


def test_sliding_window_outputs_are_checked_before_allocating(tmp_path: Path, monkeypatch) -> None:
    """A segmentation model's output buffers ((K + 1) x the grid) and the probabilities brought back to the
    input grid are checked, not only the input."""
    from medcnn.predictor import load_model

    model = load_model(tiny_checkpoint("brain-tumor", tmp_path / "bt.pt"))
    x = torch.zeros((4, 48, 48, 48))  # 1.7 MiB; the output buffers need about 3.4 MiB
    monkeypatch.setenv(ENV_VAR, "2M")
    with pytest.raises(InputError, match=r"bt\.pt: sliding-window output of 4x48x48x48 .*limit of 2 MiB"):
        model.logits(x)
    monkeypatch.setenv(ENV_VAR, "")
    assert model.logits(x).shape == (3, 48, 48, 48)


def test_a_checkpoints_fixed_input_size_is_checked_before_allocating(tmp_path: Path) -> None:
    """A checkpoint whose preprocess.size asks for 10000^3 voxels (4 TB) is refused per image, not allocated."""
    from medcnn.engine.checkpoint import save_checkpoint
    from medcnn.predictor import load_model

    ck = torch.load(tiny_checkpoint("alzheimer", tmp_path / "ad.pt"), weights_only=True)
    ck["preprocess"]["size"] = [10000, 10000, 10000]
    model = load_model(save_checkpoint(ck, tmp_path / "huge_size.pt"))
    scan = write_nifti(tmp_path / "scan.nii.gz", *head_volume())
    with pytest.raises(InputError, match=r"scan\.nii\.gz: model input \(preprocess\.size\) of 1x10000x10000x10000 .*TiB"):
        model.predict_proba(medcnn.load(scan))


@pytest.mark.parametrize("setting,pattern", [
    ("preprocess.size=[10000,10000,10000]", r"config key 'preprocess\.size': .*needs about .* TiB.*above the limit"),
    ("preprocess.size=[0,16,16]", r"config key 'preprocess\.size': .*positive integers"),
    ("preprocess.size=[16,16]", r"config key 'preprocess\.size': .*3 values"),
])
def test_absurd_input_sizes_are_refused_at_config_validation(setting: str, pattern: str, ad_manifest: Path) -> None:
    from medcnn.engine.schema import load_train_config

    with pytest.raises(ConfigError, match=pattern) as err:
        load_train_config(AD_CONFIG, [f"data.source={ad_manifest}", setting])
    assert "\n" not in str(err.value)


def test_absurd_network_width_is_refused_at_model_build(ad_manifest: Path, tmp_path: Path) -> None:
    """channels [100000, 200000]: a 2 TB network; refused from its parameter count before any allocation."""
    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest, "model.kwargs.channels=[100000,200000]")),
                                   "-o", str(tmp_path / "run")])
    _one_clear_line(res, "model.kwargs", "compact-cnn", "TiB", "limit")


# -------------------------------------------------------------------------- 13: broken checkpoints


def _tiny_dict(tmp_path: Path) -> dict:
    return torch.load(tiny_checkpoint("alzheimer", tmp_path / "good.pt"), weights_only=True, map_location="cpu")


def _broken(kind: str, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "text":
        path.write_text("model: unet\nweights: none\n")
        return path, "not a readable PyTorch checkpoint"
    ck = _tiny_dict(tmp_path)
    if kind == "no_state_dict":
        del ck["state_dict"]
        pattern = "state_dict"
    elif kind == "no_model":
        del ck["model"]
        pattern = "'model'"
    elif kind == "model_is_a_list":
        ck["model"] = ["compact-cnn", {}]
        pattern = "'model'.*mapping"
    elif kind == "state_dict_not_tensors":
        ck["state_dict"] = {"conv.weight": [1.0, 2.0]}
        pattern = "state_dict"
    elif kind == "huge_channels":
        ck["model"] = {"name": ck["model"]["name"], "kwargs": dict(ck["model"]["kwargs"], channels=[200000, 400000])}
        pattern = "weights do not fit"
    elif kind == "version_text":
        ck["version"] = "one"
        pattern = "version"
    elif kind == "version_float":
        ck["version"] = 1.5
        pattern = "version"
    elif kind == "task_unknown":
        ck["task"] = 7
        pattern = "task"
    elif kind == "unknown_network":
        ck["model"]["name"] = "resnet999"
        pattern = "resnet999"
    elif kind == "nan_weights":
        ck["state_dict"] = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in ck["state_dict"].items()}
        pattern = "NaN"
    else:
        raise AssertionError(kind)
    torch.save(ck, path)
    return path, pattern


BROKEN = ["empty", "text", "no_state_dict", "no_model", "model_is_a_list", "state_dict_not_tensors", "huge_channels",
          "version_text", "version_float", "task_unknown", "unknown_network", "nan_weights"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoints_give_one_clear_input_error(kind: str, tmp_path: Path) -> None:
    from medcnn.predictor import load_model

    path, pattern = _broken(kind, tmp_path)
    with pytest.raises(InputError, match=pattern) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value), err.value


def test_broken_checkpoint_through_the_cli_fails_once(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    for i in range(2):
        write_nifti(scans / f"case{i}.nii.gz", head_volume(seed=i)[0])
    for kind in ("empty", "huge_channels", "nan_weights"):
        path, _ = _broken(kind, tmp_path)
        res = CliRunner().invoke(cli, ["predict", "alzheimer", str(scans), "-o", str(tmp_path / f"o_{kind}"), "--model",
                                       str(path), "--device", "cpu"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"{kind}.pt" in res.output


def test_non_finite_network_outputs_make_the_case_an_error(tmp_path: Path) -> None:
    """Finite but enormous output weights overflow to Inf logits (NaN probabilities): the case is an error, not
    ``p_ad=nan, label=CN``; the same for a segmentation model."""
    from medcnn.engine.checkpoint import save_checkpoint

    scans = tmp_path / "scans"
    write_nifti(scans / "case0.nii.gz", head_volume()[0])
    for pipeline in ("alzheimer", "brain-tumor"):
        ck = torch.load(tiny_checkpoint(pipeline, tmp_path / f"{pipeline}.pt"), weights_only=True)
        last = [k for k, v in ck["state_dict"].items() if v.is_floating_point() and k.endswith(("weight", "bias"))][-2:]
        for k in last:  # the output layer: finite float32 weights whose sums overflow
            ck["state_dict"][k] = torch.full_like(ck["state_dict"][k], 3e38)
        bad = save_checkpoint(ck, tmp_path / f"{pipeline}_overflow.pt")
        from medcnn.predictor import load_model

        model = load_model(bad)
        inputs = [str(scans / "case0.nii.gz")]
        if pipeline == "brain-tumor":
            vol, aff = head_volume()
            inputs = [str(write_nifti(scans / f"bt_{c}.nii.gz", vol, aff)) for c in range(4)]
            with pytest.raises(InputError, match=r"_overflow\.pt: .*NaN or Inf"):
                model.predict(medcnn.load(inputs))
            continue
        with pytest.raises(InputError, match=r"_overflow\.pt: .*NaN or Inf"):
            model.predict_proba(medcnn.load(inputs))
        res = CliRunner().invoke(cli, ["predict", pipeline, *inputs, "-o", str(tmp_path / "out"), "--model", str(bad),
                                       "--device", "cpu"])
        assert res.exit_code == 1, res.output
        rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv", encoding="utf-8")))
        assert [r["status"] for r in rows] == ["error"] and "NaN or Inf" in rows[0]["error"], rows


# ------------------------------------------------------------------------------ 14: configs, resume


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "-0.001", "0"])
def test_non_finite_or_negative_learning_rate_is_refused(value: str, ad_manifest: Path) -> None:
    from medcnn.engine.schema import load_train_config

    with pytest.raises(ConfigError, match=r"config key 'train\.lr'"):
        load_train_config(AD_CONFIG, [f"data.source={ad_manifest}", f"train.lr={value}"])


def test_non_finite_numbers_are_refused_in_any_number_field(ad_manifest: Path) -> None:
    from medcnn.engine.schema import load_train_config

    for setting in ("train.weight_decay=.nan", "train.grad_clip=.inf", "data.val_fraction=.nan"):
        with pytest.raises(ConfigError, match=rf"config key '{setting.split('=')[0]}'.*finite"):
            load_train_config(AD_CONFIG, [f"data.source={ad_manifest}", setting])


def test_non_utf8_yaml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("# r\xe9sum\xe9 of the run\ntask: classification\n".encode("latin-1"))
    res = CliRunner().invoke(cli, ["train", str(cfg), "-o", str(tmp_path / "run")])
    _one_clear_line(res, str(cfg), "UTF-8", "line 1")


def test_resume_with_a_changed_architecture_is_one_line(ad_manifest: Path, finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = CliRunner().invoke(cli, ["train", str(AD_CONFIG), *_sets(_ad(ad_manifest, "train.epochs=2",
                                                                   "model.kwargs.channels=[4,16]")),
                                   "-o", str(run), "--resume"])
    line = _one_clear_line(res, "last.pt", "--resume")
    assert "architecture" in line and "shape" in line, line


# ------------------------------------------------------------- 15: both dataset.json training forms


def _tiny_case(folder: Path, name: str, channels: int) -> tuple[list[Path], Path]:
    vol, aff = head_volume((12, 12, 12))
    images = [write_nifti(folder / "imagesTr" / f"{name}_{c:04d}.nii.gz", vol, aff) for c in range(channels)]
    lab = write_nifti(folder / "labelsTr" / f"{name}.nii.gz", (vol > 110).astype(np.uint8), aff)
    return images, lab


def test_dataset_json_training_entries_of_both_forms(tmp_path: Path) -> None:
    from medcnn.engine.data import find_records

    msd = tmp_path / "msd"
    _tiny_case(msd, "BRATS_001", 1)
    vol4, aff = head_volume((12, 12, 12))
    nib.save(nib.Nifti1Image(np.stack([vol4] * 4, -1), aff), str(msd / "imagesTr" / "BRATS_002.nii.gz"))
    shutil.copy(msd / "labelsTr" / "BRATS_001.nii.gz", msd / "labelsTr" / "BRATS_002.nii.gz")
    (msd / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/BRATS_001_0000.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
        {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}]}))
    recs = find_records({"source": str(msd), "format": "auto"})
    assert [r["case"] for r in recs] == ["BRATS_001", "BRATS_002"]
    assert all(len(r["image"]) == 1 and Path(r["image"][0]).is_file() and Path(r["label"]).is_file() for r in recs)

    multi = tmp_path / "multi"
    cases = [_tiny_case(multi, f"BraTS_{i:05d}", 4) for i in range(2)]
    (multi / "dataset.json").write_text(json.dumps({"channel_names": {str(c): f"c{c}" for c in range(4)},
                                                    "file_ending": ".nii.gz", "training": [
        {"image": [p.relative_to(multi).as_posix() for p in imgs], "label": lab.relative_to(multi).as_posix()}
        for imgs, lab in cases]}))
    recs = find_records({"source": str(multi), "format": "auto"})
    assert [r["case"] for r in recs] == ["BraTS_00000", "BraTS_00001"]
    assert [r["image"] for r in recs] == [[str(p) for p in imgs] for imgs, _ in cases]

    bad = tmp_path / "bad"
    _tiny_case(bad, "X", 1)
    for entry, pattern in (({"image": 7, "label": "labelsTr/X.nii.gz"}, "image"),
                           ({"image": "imagesTr/X_0000.nii.gz"}, "label"),
                           ({"image": ["imagesTr/missing.nii.gz"], "label": "labelsTr/X.nii.gz"}, "missing.nii.gz")):
        (bad / "dataset.json").write_text(json.dumps({"training": [entry]}))
        with pytest.raises(ConfigError, match=pattern) as err:
            find_records({"source": str(bad), "format": "auto"})
        assert "dataset.json" in str(err.value)


def test_train_on_the_generators_nnunet_layout(tmp_path: Path) -> None:
    from medcnn.synth.brain_tumor import generate

    data = tmp_path / "bt"
    generate(data, 2, seed=0, layout="nnunet", spacing=6.0)
    assert isinstance(json.loads((data / "dataset.json").read_text())["training"][0]["image"], list)
    over = [f"data.source={data}", *TINY_SETTINGS["brain_tumor.yaml"], "train.epochs=1", "train.batch_size=1",
            "train.samples_per_case=1", "train.max_steps_per_epoch=1", "train.amp=off", "train.device=cpu",
            "data.val_fraction=0.5", "data.num_workers=0", "train.augment.names=[]"]
    res = CliRunner().invoke(cli, ["train", str(BT_CONFIG), *_sets(over), "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["preprocess"]["in_channels"] == 4
    assert ck["training"]["train_case_ids"] + ck["training"]["val_cases"] in (["BraTS_00000", "BraTS_00001"],
                                                                              ["BraTS_00001", "BraTS_00000"])
