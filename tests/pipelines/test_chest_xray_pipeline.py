"""Chest X-ray: label CSVs, letterbox geometry, multi-label / multi-mask training and ``medcnn predict chest-xray``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medcnn.cli.main import cli
from medcnn.engine.data import find_records, records_from_chexpert, records_from_nih, split_subjects
from medcnn.errors import ConfigError, InputError
from medcnn.preprocessing import restore_to_box, square_resize, square_restore

FINDINGS = ["Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------ label tables


def _chexpert_csv(tmp_path: Path) -> Path:
    img_dir = tmp_path / "CheXpert-small" / "train" / "patient00007" / "study2"
    img_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img_dir / "view1_frontal.jpg")
    p = tmp_path / "CheXpert-small" / "train.csv"
    p.write_text(
        "Path,Sex,Cardiomegaly,Pleural Effusion,Nodule\n"
        "CheXpert-small/train/patient00007/study2/view1_frontal.jpg,Male,1.0,-1.0,\n"
        "CheXpert-small/train/patient00008/study1/view1_frontal.jpg,Female,0.0,1.0,-1.0\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("policy, expected", [("zeros", 0.0), ("ones", 1.0), ("ignore", math.nan)])
def test_chexpert_uncertainty_policies(tmp_path, policy, expected) -> None:
    recs = records_from_chexpert(_chexpert_csv(tmp_path), ["Cardiomegaly", "Effusion", "Nodule"], policy)
    first, second = recs
    assert first["label"][0] == 1.0 and first["label"][2] == 0.0  # blank (unmentioned) counts as negative
    got = first["label"][1]  # -1 in 'Pleural Effusion', reached through the 'Effusion' alias
    assert (math.isnan(got) and math.isnan(expected)) or got == expected
    # subject and case from the CheXpert folder names; paths resolve against the CSV's parent
    assert first["subject"] == "patient00007" and second["subject"] == "patient00008"
    assert first["case"] == "patient00007_study2_view1_frontal"
    assert Path(first["image"][0]).is_file()


def test_chexpert_unknown_finding_and_policy_are_named(tmp_path) -> None:
    csv_path = _chexpert_csv(tmp_path)
    with pytest.raises(ConfigError, match="Pneumothorax"):
        records_from_chexpert(csv_path, ["Pneumothorax"])
    with pytest.raises(ConfigError, match="uncertainty"):
        records_from_chexpert(csv_path, ["Nodule"], "maybe")


def test_nih_labels_and_image_lookup(tmp_path) -> None:
    sub = tmp_path / "images_001" / "images"
    sub.mkdir(parents=True)
    for name in ("00000001_000.png", "00000002_000.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(sub / name)
    p = tmp_path / "Data_Entry_2017.csv"
    p.write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n"
                 "00000001_000.png,Cardiomegaly|Effusion,0,1\n00000002_000.png,No Finding,0,2\n", encoding="utf-8")
    recs = records_from_nih(p, FINDINGS)
    assert recs[0]["label"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert recs[1]["label"] == [0.0] * 5
    assert recs[0]["subject"] == "patient1"
    assert Path(recs[0]["image"][0]) == sub / "00000001_000.png"  # found in the images_001/images folder


def test_generated_tables_split_by_patient(tiny_cxr) -> None:
    """Follow-up studies of one patient share a subject; the split never puts a patient on both sides."""
    for fmt in ("chexpert", "nih"):
        recs = find_records({"source": str(tiny_cxr), "format": fmt, "classes": FINDINGS, "label": "label",
                             "subject": "subject"})
        assert len(recs) == 8
        manifest = {r["case"]: r["subject"] for r in _rows(tiny_cxr / "manifest.csv")}
        by_case = {Path(r["image"][0]).name.split(".")[0]: r["subject"] for r in recs}
        assert all(int(by_case[c].replace("patient", "")) == int(manifest[c].replace("patient", "")) for c in manifest)
        train, val = split_subjects([r["subject"] for r in recs], val_fraction=0.3, seed=1)
        assert not set(train) & set(val) and set(train) | set(val) == {r["subject"] for r in recs}


# ------------------------------------------------------------------------------ letterbox


def test_square_resize_round_trip_keeps_outline() -> None:
    h, w = 150, 90
    yy, xx = np.mgrid[:h, :w]
    disk = ((yy - 70) ** 2 / 50**2 + (xx - 40) ** 2 / 30**2) < 1
    x = torch.as_tensor(disk[None].astype(np.float32))
    small, info = square_resize(x, 64)
    assert small.shape == (1, 64, 64)
    assert info == {"hw": (h, w), "pad": (0, 30)}
    # the pad columns are empty, the content is centred
    assert float(small[0, :, :10].abs().sum()) == 0.0 and float(small[0, :, -10:].abs().sum()) == 0.0
    back = square_restore(small, info)[0].numpy() >= 0.5
    assert back.shape == (h, w)
    dice = 2 * (back & disk).sum() / (back.sum() + disk.sum())
    assert dice > 0.97
    assert torch.equal(restore_to_box(small, {"square": info}), square_restore(small, info))


def test_square_resize_label_mode_is_binary() -> None:
    m = torch.zeros(2, 40, 100, dtype=torch.uint8)
    m[0, 10:30, 10:50] = 1
    m[1, 5:15, 60:90] = 1
    out, _ = square_resize(m, 50, label=True)
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 1}
    assert out[0].sum() > 0 and out[1].sum() > 0
    with pytest.raises(ValueError, match="C, H, W"):
        square_resize(torch.zeros(1, 4, 4, 4), 8)


# ------------------------------------------------------------------------------ training + predict


def test_trained_checkpoints_describe_themselves(tiny_cxr_models) -> None:
    from medcnn import load_model

    findings, lungs = (load_model(p) for p in tiny_cxr_models)
    assert findings.config["labels"]["multilabel"] is True
    assert findings.config["labels"]["classes"] == FINDINGS
    assert findings.config["preprocess"]["square_size"] == 64
    assert all(k in findings.config["metrics"] for k in ("auroc_mean", "auroc_Cardiomegaly"))
    assert lungs.config["labels"]["channels"] == ["lungs", "heart"]
    assert lungs.config["labels"]["region_based"] is True
    assert "dice_lungs" in lungs.config["metrics"] and "dice_heart" in lungs.config["metrics"]


def test_multilabel_loss_ignores_unknown_labels() -> None:
    from medcnn.engine.trainer import MaskedBCEWithLogits

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    full = MaskedBCEWithLogits()(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    masked = MaskedBCEWithLogits()(logits, torch.tensor([[1.0, 0.0, float("nan")]]))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], torch.tensor([[1.0, 0.0]]))
    assert torch.isclose(masked, ref) and not torch.isclose(masked, full)
    weighted = MaskedBCEWithLogits(torch.tensor([3.0, 1.0, 1.0]))(logits, torch.tensor([[1.0, 0.0, float("nan")]]))
    assert weighted > masked  # positives weighted up


def test_predict_chest_xray_writes_masks_on_the_pixel_grid(tiny_cxr, tiny_cxr_models, tmp_path) -> None:
    from medcnn import load

    out = tmp_path / "out"
    # a 3D volume among the radiographs: reported, the rest still done, exit 1
    bad = tmp_path / "in"
    bad.mkdir()
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), bad / "volume.nii.gz")
    args = ["predict", "chest-xray", str(tiny_cxr / "images"), str(bad / "volume.nii.gz"), "-o", str(out),
            "--model", str(tiny_cxr_models[0]), "--model", str(tiny_cxr_models[1]), "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    rows = {r["case"]: r for r in _rows(out / "summary.csv")}
    assert rows["volume"]["status"] == "error" and "2D radiograph" in rows["volume"]["error"]
    assert not (out / "volume_lungs.png").exists()
    manifest = _rows(tiny_cxr / "manifest.csv")
    assert {m["format"] for m in manifest} == {"png", "png16", "dcm-mono1", "dcm-mono2"}
    for m in manifest:
        r = rows[m["case"]]
        assert r["status"] == "ok", r
        for f in FINDINGS:
            assert 0.0 <= float(r[f]) <= 1.0
        assert 0.0 <= float(r["lung_area_frac"]) <= 1.0
        mask = np.asarray(Image.open(out / f"{m['case']}_lungs.png"))
        img = load(tiny_cxr / m["image"])
        assert mask.shape == (int(m["rows"]), int(m["cols"])) == tuple(img.shape[1:])
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert (out / "qc" / f"{m['case']}.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["findings"]["sha256"] and run["model"]["lungs"]["sha256"]
    # a rerun skips finished cases
    res = CliRunner().invoke(cli, args)
    assert "8 skipped" in res.output


def test_lung_postprocessing_keeps_two_lungs() -> None:
    from medcnn.pipelines.chest_xray import clean_lungs

    m = np.zeros((60, 60), bool)
    m[10:50, 5:25] = True
    m[10:50, 35:55] = True
    m[30:32, 10:12] = False  # a hole
    m[2:4, 28:30] = True  # a speck
    out = clean_lungs(m)
    assert out[31, 11] and not out[3, 29]
    assert out.sum() == 2 * 40 * 20


def test_pipeline_refuses_a_model_without_lungs_channel(tiny_cxr_models, tmp_path) -> None:
    from medcnn.errors import InputError
    from medcnn.pipelines.chest_xray import load_chest_xray_models

    ck = torch.load(tiny_cxr_models[1], weights_only=True)
    ck["labels"]["channels"] = ["a", "b"]
    p = tmp_path / "odd.pt"
    torch.save(ck, p)
    with pytest.raises(InputError, match="lungs"):
        load_chest_xray_models([str(tiny_cxr_models[0]), str(p)])


def test_evaluate_run_scores_a_perfect_and_a_flawed_run(tiny_cxr, tmp_path) -> None:
    import shutil

    from medcnn.evaluation.chest_xray import evaluate_run

    manifest = _rows(tiny_cxr / "manifest.csv")
    run = tmp_path / "run"
    run.mkdir()
    lines = ["case,inputs,status,error," + ",".join(FINDINGS) + ",lung_area_frac,ctr"]
    for m in manifest:
        shutil.copy(tiny_cxr / m["lungs"], run / f"{m['case']}_lungs.png")
        shutil.copy(tiny_cxr / m["heart"], run / f"{m['case']}_heart.png")
        lines.append(f"{m['case']},x,ok,," + ",".join(m[f] for f in FINDINGS) + f",0.3,{m['ctr']}")
    (run / "summary.csv").write_text("\n".join(lines) + "\n")
    rep = evaluate_run(run, tiny_cxr, tmp_path / "report")
    assert rep["n"] == 8 and rep["dice_lungs_mean"] == 1.0 and rep["dice_heart_min"] == 1.0 and rep["ctr_mae"] == 0.0
    assert all(v == 1.0 for v in rep["auroc"].values() if not math.isnan(v))
    assert (tmp_path / "report" / "roc.png").is_file() and (tmp_path / "report" / "metrics.json").is_file()
    # erase one lung mask: its Dice drops to 0 and it heads the worst list
    first = manifest[0]["case"]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(run / f"{first}_lungs.png")))).save(run / f"{first}_lungs.png")
    rep = evaluate_run(run, tiny_cxr)
    assert rep["dice_lungs_min"] == 0.0 and rep["worst_lungs"][0] == [first, 0.0]
    res = CliRunner().invoke(cli, ["evaluate-run", "chest-xray", str(run), str(tiny_cxr)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dice_lungs_min"] == 0.0


def test_model_init_fine_tunes_from_a_checkpoint(tiny_cxr, tiny_cxr_models, tmp_path, repo_root) -> None:
    """``model.init`` starts training from given weights (with a vanishing lr the weights stay there)."""
    from medcnn.engine import load_checkpoint, train

    base = [f"data.source={tiny_cxr}", "train.epochs=1", "train.batch_size=4", "preprocess.square_size=64",
            "data.val_fraction=0.25", "train.augment.names=[]", "model.kwargs.growth_rate=4", "model.kwargs.init_features=8",
            "train.lr=1e-12", "train.warmup_epochs=0"]
    train(repo_root / "configs" / "chest_xray.yaml", [*base, f"model.init={tiny_cxr_models[0]}"], tmp_path / "ft")
    start = load_checkpoint(tiny_cxr_models[0])["state_dict"]
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")["state_dict"]
    weights = [k for k in start if k.endswith("conv.weight") or k.endswith("conv0.weight")]
    assert weights and all(torch.allclose(start[k].float(), tuned[k].float(), atol=1e-6) for k in weights)
    with pytest.raises(ConfigError, match="model.init"):
        train(repo_root / "configs" / "chest_xray.yaml", [*base, "model.kwargs.growth_rate=8", f"model.init={tiny_cxr_models[0]}"],
              tmp_path / "bad")


def test_largest_diameter_mm_of_a_disc() -> None:
    from medcnn.evaluation.chest_xray import largest_diameter_mm

    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 < 20**2  # 40 px across
    small = (yy - 150) ** 2 + (xx - 150) ** 2 < 5**2
    assert abs(largest_diameter_mm(disc | small, 0.5) - 20.0) < 0.2  # the largest component, in mm
    assert largest_diameter_mm(np.zeros((5, 5), bool)) == 0.0


def test_evaluate_run_reports_nodule_auroc_by_size(tmp_path) -> None:
    """Positives of 6, 10 and 20 mm against three negatives: one AUROC per size bin, from the masks' diameters."""
    from medcnn.evaluation.chest_xray import evaluate_run

    data, run = tmp_path / "data", tmp_path / "run"
    (data / "masks").mkdir(parents=True)
    run.mkdir()
    yy, xx = np.mgrid[:128, :128]
    man = ["case,lungs,heart,pixel_spacing_mm,Nodule"]
    summ = ["case,inputs,status,error,Nodule"]
    cases = [("n0", 0, None, 0.3), ("n1", 0, None, 0.5), ("n2", 0, None, 0.7),
             ("p6", 1, 6.0, 0.4), ("p10", 1, 10.0, 0.6), ("p20", 1, 20.0, 0.9), ("nomask", 1, None, 0.0)]
    for case, y, diam, prob in cases:
        man.append(f"{case},,,0.5,{y}")
        summ.append(f"{case},x,ok,,{prob}")
        if diam is not None:
            r_px = diam / 2 / 0.5
            Image.fromarray((((yy - 64) ** 2 + (xx - 64) ** 2 < r_px**2) * 255).astype(np.uint8)).save(
                data / "masks" / f"{case}_Nodule.png")
    (data / "manifest.csv").write_text("\n".join(man) + "\n")
    (run / "summary.csv").write_text("\n".join(summ) + "\n")
    rep = evaluate_run(run, data)
    by = {b["diameter_mm"]: b for b in rep["auroc_by_size"]["Nodule"]}
    assert list(by) == ["0-8", "8-12", "12-18", ">=18"]
    assert by["0-8"]["positives"] == 1 and by["0-8"]["auroc"] == round(1 / 3, 4)  # 0.4 beats one negative of three
    assert by["8-12"]["auroc"] == round(2 / 3, 4) and by[">=18"]["auroc"] == 1.0
    assert by["12-18"] == {"diameter_mm": "12-18", "positives": 0, "auroc": None}
    assert sum(b["positives"] for b in by.values()) == 3  # the positive without a mask file is left out
    assert rep["worst_lungs"] == []  # no lung masks in this run: nothing to rank, no error
    assert "auroc_by_size" not in evaluate_run(run, data, size_bins_mm={})


def test_fuse_scores_is_a_logistic_fusion_of_two_logits() -> None:
    from medcnn.pipelines.chest_xray import fuse_scores

    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert fuse_scores(0.3, logit(0.3)) == pytest.approx(0.3)  # default: the mean of the two logits
    assert fuse_scores(0.1, logit(0.9)) == pytest.approx(0.5)
    assert fuse_scores(0.5, 2.0, (1.0, 0.25, -1.0)) == pytest.approx(1 / (1 + math.exp(0.5)))
    assert fuse_scores(0.2, 5.0, (2.0, 0.0, 0.0)) == pytest.approx(1 / (1 + 16))  # detector weight 0: classifier only
    assert fuse_scores(0.4, 3.0, (1.0, 0.5, 0.0)) > fuse_scores(0.4, 1.0, (1.0, 0.5, 0.0))  # monotone in the score
    assert 0.0 <= fuse_scores(0.0, -16.0) < 1e-6 and fuse_scores(1.0, 16.0) > 1 - 1e-6


def test_nodule_score_counts_inside_the_lungs_only() -> None:
    from medcnn.pipelines.chest_xray import NODULE_LUNG_MARGIN_PX, nodule_score

    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    prob = np.zeros((60, 60))
    lungs = np.zeros((60, 60), bool)
    lungs[10:50, 5:25] = True
    prob[30, 50] = 0.9  # a bright spot outside the lungs (e.g. a marker beyond the margin)
    prob[30, 15] = 0.4
    assert nodule_score(prob, lungs) == pytest.approx(logit(0.4))
    prob[30, 25 + NODULE_LUNG_MARGIN_PX - 1] = 0.6  # within the margin: counts
    assert nodule_score(prob, lungs) == pytest.approx(logit(0.6))
    assert nodule_score(prob, np.zeros_like(lungs)) == pytest.approx(logit(0.9))  # no lung mask: the whole image
    # near 1 the logit still ranks what a rounded probability would not
    prob[20, 10] = 1 - 1e-6
    high = nodule_score(prob, lungs)
    prob[20, 10] = 1 - 1e-4
    assert high > nodule_score(prob, lungs) + 4 and high == pytest.approx(logit(1 - 1e-6), abs=1e-3)


def test_nodule_detector_joins_the_nodule_probability(tiny_cxr, tiny_cxr_models, tiny_cxr_nodule, tmp_path) -> None:
    from medcnn.pipelines.chest_xray import PIPELINE, fuse_scores, load_chest_xray_models

    models = load_chest_xray_models([str(p) for p in (*tiny_cxr_models, tiny_cxr_nodule)])
    assert models.nodule is not None and models.lungs.path != models.nodule.path
    assert set(models.info()) == {"findings", "lungs", "nodule"}
    case = PIPELINE.discover([tiny_cxr / "images"])[0]
    img = PIPELINE.load(case)
    classes = list(models.findings.config["labels"]["classes"])
    p_cls = float(models.findings.predict_proba(img)[classes.index("Nodule")])
    for weights in (None, [1.5, 0.25, -0.5]):  # the checkpoint's inference.score_fusion, or the logit mean
        models.nodule.config["inference"]["score_fusion"] = weights
        row = PIPELINE.run(models, case, img, tmp_path)
        assert -17 < row["nodule_detector"] < 17
        assert row["Nodule"] == pytest.approx(fuse_scores(p_cls, row["nodule_detector"], weights), abs=2e-4)
    # a findings model of one's own without a detector keeps its own Nodule probability
    models.nodule = None
    row = PIPELINE.run(models, case, img, tmp_path)
    assert "nodule_detector" not in row and row["Nodule"] == pytest.approx(p_cls, abs=1e-4)
    assert load_chest_xray_models([str(p) for p in tiny_cxr_models]).nodule is None


def test_fit_score_fusion_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    from medcnn.evaluation.chest_xray_fusion import fit_score_fusion

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    l_cls = rng.normal(0, 1, 300) + 1.2 * y
    det = rng.normal(8, 2, 300) + 1.5 * y  # a saturating detector's logits sit high for every case
    p_cls = 1 / (1 + np.exp(-l_cls))
    ref = LogisticRegression(C=1e4, tol=1e-10, max_iter=1000).fit(np.stack([l_cls, det], 1), y)
    w = fit_score_fusion(p_cls, det, y)
    np.testing.assert_allclose(w, [*ref.coef_[0], ref.intercept_[0]], atol=2e-4)
    with pytest.raises(ValueError, match="positive and negative"):
        fit_score_fusion(p_cls[:5], det[:5], np.zeros(5))


def test_fusion_data_scores_the_findings_models_validation_cases(tiny_cxr, tiny_cxr_models, tiny_cxr_nodule) -> None:
    from medcnn.engine import load_checkpoint
    from medcnn.evaluation.chest_xray_fusion import fusion_data

    val = load_checkpoint(tiny_cxr_models[0])["training"]["val_cases"]
    p_cls, scores, labels = fusion_data(str(tiny_cxr_nodule), tiny_cxr, findings=str(tiny_cxr_models[0]),
                                        lungs=str(tiny_cxr_models[1]), progress=False)
    manifest = {m["case"]: m for m in _rows(tiny_cxr / "manifest.csv")}
    assert len(p_cls) == len(scores) == len(labels) == len(val) > 0
    assert labels == [int(manifest[c]["Nodule"]) for c in manifest if c in set(val)]
    assert all(0 <= p <= 1 for p in p_cls) and all(-17 < s < 17 for s in scores)


def test_fusion_data_refuses_a_detector_trained_on_the_validation_cases(tiny_cxr, tiny_cxr_models, tiny_cxr_nodule,
                                                                        tmp_path) -> None:
    from medcnn.engine import load_checkpoint
    from medcnn.evaluation.chest_xray_fusion import fusion_data

    ckpt = load_checkpoint(tiny_cxr_nodule)
    leaked = ckpt["training"]["train_case_ids"][0]
    findings = load_checkpoint(tiny_cxr_models[0])
    findings["training"]["val_cases"] = [*findings["training"]["val_cases"], leaked]
    torch.save(findings, tmp_path / "findings.pt")
    with pytest.raises(InputError, match=f"trained on 1 of the findings model's validation cases \\(e.g. {leaked}\\)"):
        fusion_data(str(tiny_cxr_nodule), tiny_cxr, findings=str(tmp_path / "findings.pt"),
                    lungs=str(tiny_cxr_models[1]), progress=False)


def test_fit_fusion_command_prints_the_export_setting(monkeypatch) -> None:
    import json

    from medcnn.evaluation import chest_xray_fusion

    rng = np.random.default_rng(0)
    y = [0, 1] * 40
    monkeypatch.setattr(chest_xray_fusion, "fusion_data", lambda det, data, findings, lungs: (
        list(1 / (1 + np.exp(-(rng.normal(0, 1, 80) + np.asarray(y))))), list(rng.normal(8, 1, 80) + np.asarray(y)), y))
    res = CliRunner().invoke(cli, ["calibrate", "fusion", "det.pt", "."])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 80 and out["positives"] == 40 and len(out["score_fusion"]) == 3
    assert out["auroc"]["fused"] >= max(out["auroc"]["classifier"], out["auroc"]["detector"]) - 0.02
    assert out["export"] == f"medcnn export det.pt -o OUT.pt --set \"inference.score_fusion={json.dumps(out['score_fusion']).replace(' ', '')}\""


def test_detector_manifest_merges_sets_without_the_findings_validation_cases(tiny_cxr, tiny_cxr_models,
                                                                             tmp_path) -> None:
    from medcnn.engine import load_checkpoint
    from medcnn.evaluation.chest_xray_sets import detector_manifest

    val = set(load_checkpoint(tiny_cxr_models[0])["training"]["val_cases"])
    src = _rows(tiny_cxr / "manifest.csv")
    out = tmp_path / "det"
    n, pos = detector_manifest(out, [(tiny_cxr, ""), (tiny_cxr, "b-")], findings=str(tiny_cxr_models[0]))
    rows = _rows(out / "manifest.csv")
    assert val and n == len(rows) == 2 * len(src) - len(val)
    assert pos == sum(r["Nodule"] == "1" for r in rows)
    assert not val & {r["case"] for r in rows}                                  # left out for the fusion fit
    assert {r["case"] for r in rows if r["case"].startswith("b-")} == {"b-" + r["case"] for r in src}
    assert all(r["subject"].startswith("b-") for r in rows if r["case"].startswith("b-"))
    assert all((out / r[k]).is_file() for r in rows for k in ("image", "lungs") if r[k])   # relative to out
    nod = [r for r in rows if r["nodule"]]
    assert nod and all((out / r["nodule"]).is_file() for r in nod)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("case,image\nx,y.png\n")
    with pytest.raises(InputError, match="columns differ"):
        detector_manifest(tmp_path / "bad", [(tiny_cxr, ""), (other, "o-")], findings=str(tiny_cxr_models[0]))


def test_detector_data_command_reads_folder_prefix_pairs(monkeypatch) -> None:
    from medcnn.evaluation import chest_xray_sets

    seen = {}
    monkeypatch.setattr(chest_xray_sets, "detector_manifest",
                        lambda out, sources, findings: seen.update(out=out, sources=sources, findings=findings) or (7, 3))
    res = CliRunner().invoke(cli, ["merge-sets", "detector", "data/det", "data/a", "data/b:s7-", r"C:\data\c"])
    assert res.exit_code == 0, res.output
    assert seen == {"out": Path("data/det"), "sources": [("data/a", ""), ("data/b", "s7-"), (r"C:\data\c", "")],
                    "findings": "chest-xray"}
    assert "wrote 7 cases (3 with a nodule)" in res.stdout
    assert CliRunner().invoke(cli, ["merge-sets", "detector", "data/det"]).exit_code == 2  # no set to merge


def test_findings_data_merges_sets_into_one_chexpert_folder(tiny_cxr, tiny_cxr_models, tmp_path) -> None:
    """Two sets merged under prefixes train as one CheXpert folder: every radiograph once, each set's patients
    apart, each present finding's mask found again, and the findings model's validation cases held out by
    ``data.val_cases``."""
    from medcnn.engine import load_checkpoint
    from medcnn.engine.data import find_records, fixed_split
    from medcnn.evaluation.chest_xray_sets import findings_data

    out = tmp_path / "cls"
    n, n_masks = findings_data(out, [(tiny_cxr, ""), (tiny_cxr, "b-")])
    src = _rows(tiny_cxr / "labels.csv")
    assert n == 2 * len(src)
    finding_masks = [p for p in (tiny_cxr / "masks").glob("*.png") if p.stem.rpartition("_")[2] in FINDINGS]
    assert finding_masks and n_masks == 2 * len(finding_masks)
    recs = find_records({"source": str(out), "format": "chexpert", "classes": list(FINDINGS), "uncertainty": "ignore",
                         "images": None, "finding_masks": "masks/{case}_{finding}.png"})
    by_case = {r["case"]: r for r in recs}
    assert len(by_case) == n
    for r in src:
        case = Path(r["Path"]).stem
        a, b = by_case[case], by_case["b-" + case]
        assert b["subject"] == "b-" + a["subject"] and a["label"] == b["label"]
        assert Path(a["image"][0]).read_bytes() == (tiny_cxr / r["Path"]).read_bytes() == Path(b["image"][0]).read_bytes()
        assert [m is None for m in a["finding_masks"]] == [m is None for m in b["finding_masks"]]
        for m_a, m_b in zip(a["finding_masks"], b["finding_masks"]):
            if m_a:
                assert Path(m_a).read_bytes() == Path(m_b).read_bytes()
    assert sum(m is not None for r in recs for m in r["finding_masks"]) > 0
    val = load_checkpoint(tiny_cxr_models[0])["training"]["val_cases"]
    train_s, val_s = fixed_split(recs, val)
    assert set(val_s) == {by_case[c]["subject"] for c in val}
    assert {by_case["b-" + c]["subject"] for c in val} <= set(train_s), "the other set's copies may train"
    with pytest.raises(InputError, match="second radiograph named"):
        findings_data(tmp_path / "dup", [(tiny_cxr, ""), (tiny_cxr, "")])
    before = (tiny_cxr / src[0]["Path"]).read_bytes()
    with pytest.raises(InputError, match="must not be one of the sets"):
        findings_data(tiny_cxr, [(tiny_cxr, "")])
    assert (tiny_cxr / src[0]["Path"]).read_bytes() == before and not (tiny_cxr / src[0]["Path"]).is_symlink()


def test_findings_data_command(monkeypatch) -> None:
    from medcnn.evaluation import chest_xray_sets

    seen = {}
    monkeypatch.setattr(chest_xray_sets, "findings_data", lambda out, sources: seen.update(out=out, sources=sources) or (9, 4))
    res = CliRunner().invoke(cli, ["merge-sets", "findings", "data/cls", "data/a", "data/b:s7-"])
    assert res.exit_code == 0, res.output
    assert seen == {"out": Path("data/cls"), "sources": [("data/a", ""), ("data/b", "s7-")]}
    assert "wrote 9 radiographs (4 finding masks)" in res.stdout
    assert CliRunner().invoke(cli, ["merge-sets", "both", "data/cls", "data/a"]).exit_code == 2
