"""``medcnn calibrate``: fit a trained model's post-hoc settings on held-out data and write them into a copy."""

from __future__ import annotations

import json
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("calibrate", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn calibrate fusion runs/cxr_nodule/last.pt data/cxr_train3
  medcnn calibrate exact-box data/val_manifest.csv --model runs/prompt/best.pt -o calibrated.pt
  medcnn calibrate offsets data/prompt_cal --model runs/prompt/best.pt -o adaptive.pt
  medcnn calibrate temperature alzheimer data/ad_cal -o alzheimer_cal.pt
\b
Out-of-distribution statistics of a pipeline's checkpoint: `medcnn ood-fit`.
""")
def calibrate() -> None:
    """Fit score fusion weights, promptable-model offsets or a classifier's temperature on data the model never trained on."""


@calibrate.command("fusion", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn calibrate fusion runs/cxr_nodule/last.pt data/cxr_train3
  medcnn calibrate fusion det.pt data/cxr_train3 --findings runs/cxr/best.pt --lungs chest-xray-lungs
\b
The radiographs are the findings model's validation cases (its training.val_cases), looked up in
DATA_DIR/manifest.csv; a detector that trained on any of them is refused. Prints the weights
(inference.score_fusion), the AUROC of the classifier, the detector and the fused score, and the
`medcnn export --set` line that stores the weights in the detector checkpoint.
""")
@click.argument("detector")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--findings", default="chest-xray", show_default=True, help="Findings classifier (name or checkpoint).")
@click.option("--lungs", default="chest-xray-lungs", show_default=True, help="Lung/heart model (name or checkpoint).")
def fusion(detector: str, data_dir: Path, findings: str, lungs: str) -> None:
    """Fit the weights fusing the chest X-ray nodule DETECTOR (checkpoint or name) with the findings classifier."""
    import numpy as np

    from medcnn.evaluation.chest_xray_fusion import fit_score_fusion, fusion_data
    from medcnn.metrics import roc_auc
    from medcnn.pipelines.chest_xray_models import fuse_scores

    p_cls, scores, labels = fusion_data(detector, data_dir, findings=findings, lungs=lungs)
    w = fit_score_fusion(p_cls, scores, labels)
    fused = [fuse_scores(p, s, w) for p, s in zip(p_cls, scores)]
    y = np.asarray(labels)
    click.echo(json.dumps({
        "n": len(labels), "positives": int(y.sum()), "score_fusion": w,
        "auroc": {"classifier": round(roc_auc(np.asarray(p_cls), y), 4),
                  "detector": round(roc_auc(np.asarray(scores), y), 4), "fused": round(roc_auc(np.asarray(fused), y), 4)},
        "export": f"medcnn export {detector} -o OUT.pt --set \"inference.score_fusion={json.dumps(w).replace(' ', '')}\"",
    }, indent=2))


@calibrate.command("exact-box", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn calibrate exact-box data/val_manifest.csv --model runs/prompt/best.pt -o calibrated.pt
\b
Every object of DATA (at most --max-objects per image) gets its exact box with each candidate offset; the
offset with the best mean Dice goes into a copy of the light promptable checkpoint (weights unchanged).
`medcnn train` does the same at every validation. Its per-prompt offset models, fitted around the old
offsets, are dropped: refit them with `medcnn calibrate offsets`.
""")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, help="Light promptable checkpoint (medcnn train, task: prompt).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Calibrated copy to write.")
@click.option("--max-objects", type=click.IntRange(min=1), default=4, show_default=True, help="Objects per image.")
def exact_box(data: Path, model: str, output: Path, max_objects: int) -> None:
    """Choose a promptable checkpoint's exact-box logit offset on held-out images DATA."""
    import torch

    from medcnn.evaluation.prompt import calibrate_exact

    with torch.no_grad():
        got = calibrate_exact(data, model, output, max_objects=max_objects)
    click.echo(f"exact-box offset {got['offset']:.1f}: Dice {got['dice']:.4f} over {got['objects']} objects -> {output}")


@calibrate.command("offsets", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn calibrate offsets data/prompt_cal --model runs/prompt/best.pt -o adaptive.pt
  medcnn calibrate offsets data/cal_a data/cal_b --model runs/prompt/best.pt -o adaptive.pt
\b
DATA: images neither the network nor your evaluation uses (a few hundred; several folders fit as one set).
Prints the Dice of the fixed offset and the 5-fold cross-validated Dice of per-prompt offsets per kind of box.
""")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, help="Light promptable checkpoint (medcnn train, task: prompt).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Copy with the offsets to write.")
def offsets(data: tuple[Path, ...], model: str, output: Path) -> None:
    """Fit a promptable checkpoint's per-prompt offsets on held-out images DATA."""
    import torch

    from medcnn.evaluation.prompt import fit_offsets, summarise_offsets

    with torch.no_grad():
        rep = fit_offsets(data[0] if len(data) == 1 else list(data), model, output)
    click.echo(f"{summarise_offsets(rep)}\n-> {output}")


@calibrate.command("temperature", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn generate alzheimer -n 60 --seed 3201 -o data/ad_cal
  medcnn calibrate temperature alzheimer data/ad_cal -o alzheimer_cal.pt            # the bundled model
  medcnn calibrate temperature alzheimer data/cal_a data/cal_b --model runs/alzheimer/last.pt -o cal.pt
  medcnn predict alzheimer data/ad_test -o runs/ad_test --model alzheimer_cal.pt
\b
DATA: held-out labelled cases of the model's training generator (seeds it never trained on; never the test
set). alzheimer labels: the diagnosis column of each BIDS folder's participants.tsv. The copy keeps every
entry of the checkpoint, the weights byte for byte, and adds (or replaces) a `calibration` section:
predictions then report softmax(logits / T). T > 0 keeps the ranking and the 0.5 decisions of two classes.
Prints T and the NLL, ECE (15 bins) and accuracy before/after on the fitting cases.
""")
@click.argument("pipeline")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--model", "model_ref", multiple=True, help="Bundled model name or checkpoint path, as for predict.")
def temperature(pipeline: str, data: tuple[Path, ...], dest: Path, model_ref: tuple[str, ...]) -> None:
    """Fit a classifier's temperature on held-out labelled cases DATA; write a copy that applies it."""
    from medcnn.evaluation.temperature import SUPPORTED, fit_temperature_checkpoint

    if pipeline not in SUPPORTED:
        raise click.UsageError(f"temperature scaling supports {', '.join(SUPPORTED)}, not {pipeline!r}")
    rep = fit_temperature_checkpoint(pipeline, list(data), dest, list(model_ref) or None)
    click.echo(f"temperature {rep['temperature']:.4f} fitted on {rep['n']} case(s) -> {dest}")
    for key in ("nll", "ece", "accuracy"):
        before, after = rep[key]
        click.echo(f"  {key:<8} {before:.4f} -> {after:.4f}")
