"""Score the bundled models on generator-B test data (``benchmarks/genb``), which no model was trained or tuned on.

    OMP_NUM_THREADS=1 python benchmarks/eval_generator_b.py alzheimer -n 30 --seed 7001 --work runs/genb
    OMP_NUM_THREADS=1 python benchmarks/eval_generator_b.py brain-tumor -n 12 --seed 7002 --work runs/genb
    OMP_NUM_THREADS=1 python benchmarks/eval_generator_b.py chest-xray -n 100 --seed 7003 --work runs/genb
    OMP_NUM_THREADS=1 python benchmarks/eval_generator_b.py prompt -n 150 --seed 7004 --work runs/genb
    OMP_NUM_THREADS=1 python benchmarks/eval_generator_b.py alzheimer --data runs/genb/alzheimer_data \
        --model alzheimer_cal.pt --work runs/genb_cal       # another checkpoint on the same cases

Each call generates ``WORK/TASK_data`` (kept when it already holds a set: ``--data DIR`` reads another one), runs
``medcnn predict`` (prompt: the Python API) into ``WORK/TASK_pred`` and prints the figures as JSON (also written to
``WORK/TASK_metrics.json``): alzheimer balanced accuracy, AUROC (scikit-learn) and ECE (medcnn's, 15 bins);
brain-tumor WT/TC/ET Dice (``medcnn evaluate``); chest-xray AUROC per finding and their mean, lung and heart
Dice; prompt box Dice overall, for objects filling < 30 % of their box, per shape class and per dimension.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.genb import alzheimer, brain_tumor, chest_xray, prompt  # noqa: E402

GENERATORS = {"alzheimer": alzheimer, "brain-tumor": brain_tumor, "chest-xray": chest_xray, "prompt": prompt}


#: ``--model`` values passed to ``medcnn predict`` (empty: the bundled models)
MODELS: list[str] = []


def _predict(pipeline: str, inputs: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "medcnn.cli.main", "predict", pipeline, str(inputs), "-o", str(out)]
    for m in MODELS:
        cmd += ["--model", m]
    subprocess.run(cmd, check=False)


def _rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def eval_alzheimer(data: Path, pred: Path) -> dict:
    """Balanced accuracy at 0.5, AUROC and ECE of ``p_ad`` against ``participants.tsv``."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from medcnn.metrics.classification import expected_calibration_error

    _predict("alzheimer", data, pred)
    truth = {r["participant_id"]: int(r["diagnosis"] == "AD") for r in _rows(data / "participants.tsv", "\t")}
    got = {r["case"]: float(r["p_ad"]) for r in _rows(pred / "summary.csv") if r["status"] == "ok"}
    ids = sorted(set(truth) & set(got))
    y, p = np.array([truth[i] for i in ids]), np.array([got[i] for i in ids])
    return {"n": len(ids), "failed": len(truth) - len(ids), "balanced_accuracy": balanced_accuracy_score(y, p >= 0.5),
            "auroc": roc_auc_score(y, p), "ece": expected_calibration_error(p, y),
            "sensitivity": float((p[y == 1] >= 0.5).mean()), "specificity": float((p[y == 0] < 0.5).mean())}


def eval_brain_tumor(data: Path, pred: Path) -> dict:
    """Mean WT/TC/ET Dice from ``medcnn evaluate`` (BraTS conventions)."""
    _predict("brain-tumor", data, pred)
    out_csv = pred / "metrics.csv"
    subprocess.run([sys.executable, "-m", "medcnn.cli.main", "evaluate", str(pred), str(data), "-o", str(out_csv)], check=False)
    rows = _rows(out_csv)
    res: dict = {"n": len({r["case"] for r in rows if r["case"] != "mean"})}
    for r in rows:
        if r["case"] == "mean":
            res[f"{r['region']}_dice"] = float(r["dice"])
    return res


def eval_chest_xray(data: Path, pred: Path) -> dict:
    """AUROC per finding (both classes present) and their mean; lung and heart Dice on the input grid."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    _predict("chest-xray", data / "images", pred)
    labels = {r["case"]: r for r in _rows(data / "labels.csv")}
    got = {r["case"]: r for r in _rows(pred / "summary.csv") if r["status"] == "ok"}
    ids = sorted(set(labels) & set(got))
    res: dict = {"n": len(ids), "failed": len(labels) - len(ids), "auroc": {}}
    for f in chest_xray.FINDINGS:
        y = np.array([int(labels[i][f]) for i in ids])
        if 0 < y.sum() < len(y) and f in got[ids[0]]:
            res["auroc"][f] = roc_auc_score(y, [float(got[i][f]) for i in ids])
    res["mean_auroc"] = float(np.mean(list(res["auroc"].values()))) if res["auroc"] else float("nan")
    for part in ("lungs", "heart"):
        d = []
        for i in ids:
            ref = np.array(Image.open(data / labels[i][part])) > 0
            p = pred / f"{i}_{part}.png"
            d.append(_dice(np.array(Image.open(p)) > 0, ref) if p.exists() else 0.0)
        res[f"{part}_dice"] = float(np.mean(d))
        res[f"{part}_dice_min"] = float(np.min(d))
    return res


def eval_prompt(data: Path, pred: Path, exact_box: bool) -> dict:
    """Box Dice of the bundled promptable model per object; means overall, fill < 0.3, per class and dimension."""
    import medcnn

    seg = medcnn.PromptableSegmenter.from_pretrained("medcnn-prompt")
    rows = _rows(data / "objects.csv")
    per = []
    for r in rows:
        img = medcnn.load(data / r["image"])
        ref = medcnn.load(data / r["mask"]).numpy()[0] > 0
        seg.set_image(img)
        box = tuple(int(v) for v in r["box"].split())
        m = np.asarray(seg.predict(box=box, exact_box=exact_box)).astype(bool)
        per.append({"case": r["case"], "dim": int(r["dim"]), "shape_class": r["shape_class"], "structure": r["structure"],
                    "fill": float(r["fill"]), "polarity": r["polarity"], "dice": _dice(m, ref)})
    pred.mkdir(parents=True, exist_ok=True)
    with open(pred / f"per_object{'_exact' if exact_box else ''}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(per[0]))
        w.writeheader()
        w.writerows(per)
    mean = lambda sel: (round(float(np.mean([p["dice"] for p in sel])), 4), len(sel)) if sel else (float("nan"), 0)  # noqa: E731
    res = {"exact_box": exact_box, "n": len(per), "mean_dice": mean(per), "fill_lt_30": mean([p for p in per if p["fill"] < 0.3]),
           "dim2": mean([p for p in per if p["dim"] == 2]), "dim3": mean([p for p in per if p["dim"] == 3])}
    for key in ("shape_class", "polarity"):
        for v in sorted({p[key] for p in per}):
            res[f"{key}={v}"] = mean([p for p in per if p[key] == v])
    for v in sorted({p["structure"] for p in per if p["shape_class"] == "anatomy"}):
        res[f"anatomy={v}"] = mean([p for p in per if p["structure"] == v])
    return res


def main(argv: list[str] | None = None) -> int:
    """Generate (or read) a generator-B set, run the bundled model, print and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=sorted(GENERATORS))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7000)
    ap.add_argument("--work", default="runs/genb", help="where the data, predictions and metrics go")
    ap.add_argument("--data", default=None, help="an existing generator-B folder (else WORK/TASK_data)")
    ap.add_argument("--model", action="append", default=[],
                    help="checkpoint or bundled name for medcnn predict (repeatable as for predict; not for prompt); "
                         "use a fresh --work per model (predict skips cases already in WORK/TASK_pred)")
    args = ap.parse_args(argv)
    if args.model and args.task == "prompt":
        ap.error("--model is for the predict tasks (alzheimer, brain-tumor, chest-xray)")
    MODELS[:] = args.model
    work = Path(args.work)
    data = Path(args.data) if args.data else work / f"{args.task}_data"
    marker = {"alzheimer": "participants.tsv", "brain-tumor": "cases.csv", "chest-xray": "labels.csv", "prompt": "objects.csv"}
    if not (data / marker[args.task]).exists():
        GENERATORS[args.task].generate(args.n, args.seed, data)
    pred = work / f"{args.task}_pred"
    if args.task == "prompt":
        res = {"default_box": eval_prompt(data, pred, False), "exact_box": eval_prompt(data, pred, True)}
    else:
        res = {"alzheimer": eval_alzheimer, "brain-tumor": eval_brain_tumor, "chest-xray": eval_chest_xray}[args.task](data, pred)
    if args.model:
        res["model"] = args.model
    res = json.loads(json.dumps(res, default=float))
    (work / f"{args.task}_metrics.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
