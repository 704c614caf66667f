"""``medcnn evaluate-run``: score a run (or a promptable model) against held-out references."""

from __future__ import annotations

import json
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("evaluate-run", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn evaluate-run chest-xray runs/cxr_test data/cxr_test -o runs/cxr_test/eval
  medcnn evaluate-run alzheimer runs/ad_test/summary.csv data/ad_test/participants.tsv -o runs/ad_test/eval
  medcnn evaluate-run prompt data/prompt_test -o runs/prompt_eval.csv
\b
Label maps of a segmentation run (Dice, HD95, NSD per case and region): `medcnn evaluate PRED REF`.
""")
def evaluate_run() -> None:
    """Held-out metrics of a `medcnn predict` run against its dataset, or of a promptable model."""


@evaluate_run.command("chest-xray", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn predict chest-xray data/cxr_test/images -o runs/cxr_test
  medcnn evaluate-run chest-xray runs/cxr_test data/cxr_test -o runs/cxr_test/eval
\b
DATA_DIR holds manifest.csv (case, lungs, heart mask paths, ctr, one 0/1 column per finding; pixel_spacing_mm
for nodule sizes in mm), as `medcnn generate chest-xray` writes it. Prints the metrics as JSON: AUROC per
finding and by nodule size, lung and heart Dice on the input pixel grid, CTR error, the worst lung cases.
""")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write metrics.json, per_case.csv and roc.png here.")
def chest_xray(run_dir: Path, data_dir: Path, report_dir: Path | None) -> None:
    """Score the `medcnn predict chest-xray` run RUN_DIR against the dataset DATA_DIR."""
    from medcnn.evaluation.chest_xray import evaluate_run as score

    click.echo(json.dumps(score(run_dir, data_dir, report_dir), indent=2))


@evaluate_run.command("alzheimer", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn predict alzheimer data/ad_test -o runs/ad_test
  medcnn evaluate-run alzheimer runs/ad_test/summary.csv data/ad_test/participants.tsv -o runs/ad_test/eval
  medcnn evaluate-run alzheimer summary.csv participants.tsv --threshold 0.42 --label-column group
\b
Every ok row is matched to its subject (sub-XX of sub-XX[_ses-YY]); rows whose subject has no AD/CN diagnosis
are left out and counted. Prints AUROC, balanced accuracy, sensitivity, specificity, ECE, the confusion matrix
and the misclassified images as JSON.
""")
@click.argument("summary", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("participants", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Also write metrics.json, roc.png and confusion.png here.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Decision threshold on p_ad (use the model's: its inference.threshold).")
@click.option("--label-column", default="diagnosis", show_default=True, help="participants.tsv column with AD/CN.")
def alzheimer(summary: Path, participants: Path, out_dir: Path | None, threshold: float, label_column: str) -> None:
    """Score the summary.csv SUMMARY of `medcnn predict alzheimer` against the diagnoses in PARTICIPANTS."""
    from medcnn.evaluation.alzheimer import evaluate_summary, headline

    rep = evaluate_summary(summary, participants, out_dir, label_column=label_column, threshold=threshold)
    click.echo(json.dumps(headline(rep), indent=2))


@evaluate_run.command("prompt", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn evaluate-run prompt data/prompt_test -o runs/prompt_eval.csv          # box, exact box, click, refine
  medcnn evaluate-run prompt data/prompt_test --model runs/prompt/best.pt --max-objects 4
  medcnn evaluate-run prompt --real-t1 --model runs/prompt/best.pt              # real MRI: MNI152 T1 slices
  medcnn evaluate-run prompt --volumes data/bt_dev --exact-box                  # 3D box propagation
\b
DATA is a folder with manifest.csv (image, label[, source]) or a manifest CSV. Prints mean Dice per prompt
mode (overall and per source), per structure (--real-t1) or over the volumes (--volumes).
""")
@click.argument("data", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None, help="Checkpoint or bundled name (default: medcnn-prompt).")
@click.option("--real-t1", is_flag=True, help="Score real T1 MRI (the vendored MNI152 template) instead of DATA.")
@click.option("--volumes", is_flag=True, help="DATA holds labelled volumes: score 3D box propagation.")
@click.option("--channel", type=int, default=-1, show_default=True, help="With --volumes: image channel prompted (-1: the last).")
@click.option("--exact-box", is_flag=True, help="With --real-t1 or --volumes: declare the boxes exact (a DATA folder "
                                                 "always scores both ways).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Per-object CSV to write.")
@click.option("--max-objects", type=click.IntRange(min=1), default=None, help="Objects scored per image (default: all).")
def prompt(data: Path | None, model: str | None, real_t1: bool, volumes: bool, channel: int, exact_box: bool,
           output: Path | None, max_objects: int | None) -> None:
    """Held-out Dice of a promptable model on DATA (or on real T1 slices with --real-t1)."""
    import torch

    from medcnn.evaluation import prompt as ev

    if real_t1 == (data is not None):
        raise click.UsageError("give a DATA folder or --real-t1")
    if volumes and real_t1:
        raise click.UsageError("--volumes scores DATA; --real-t1 scores the template: give one")
    with torch.no_grad():  # scoped: the command may run inside another program (the tests invoke it)
        if real_t1:
            rows, report = ev.evaluate_real_t1(model, exact_box=exact_box), ev.summarise_real_t1
        elif volumes:
            rows, report = ev.evaluate_volumes(data, model, channel=channel, exact_box=exact_box), ev.summarise_volumes
        else:
            rows, report = ev.evaluate(data, model, max_objects=max_objects), ev.summarise
    if output is not None:
        ev.write_rows(rows, output)
    click.echo(report(rows))
