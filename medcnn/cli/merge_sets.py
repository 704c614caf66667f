"""``medcnn merge-sets``: merge generated chest X-ray sets into one training set."""

from __future__ import annotations

from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _folder_prefix(src: str) -> tuple[str, str]:
    """``FOLDER[:PREFIX]`` split at its last colon (a Windows drive's ``C:\\`` is no prefix)."""
    head, sep, tail = src.rpartition(":")
    return (head, tail) if sep and head and not any(c in tail for c in "/\\") else (src, "")


@click.command("merge-sets", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn merge-sets detector data/cxr_det data/cxr_train3 data/cxr_nod7:s7-     # manifest.csv, nodule detector
  medcnn merge-sets findings data/cxr_cls data/cxr_train3 data/cxr_nod7:s7-     # labels.csv, findings model
\b
Each SET is a `medcnn generate chest-xray` folder, optionally with :PREFIX put before its case, subject and
file names so that two sets' cxr-00001 stay apart. detector: OUT/manifest.csv without the findings model's
validation cases (they fit the fusion, `medcnn calibrate fusion`). findings: OUT/labels.csv (CheXpert layout)
with images/ and masks/ linked (copied where links are not allowed); hold the findings model's validation
cases out when training with --set data.val_cases=chest-xray.
""")
@click.argument("kind", type=click.Choice(["detector", "findings"]))
@click.argument("out_dir", type=click.Path(path_type=Path), metavar="OUT")
@click.argument("sets", nargs=-1, required=True, metavar="SET[:PREFIX]...")
@click.option("--findings-model", default="chest-xray", show_default=True,
              help="detector: the findings model whose validation cases are left out.")
def merge_sets(kind: str, out_dir: Path, sets: tuple[str, ...], findings_model: str) -> None:
    """Merge the generated chest X-ray SETs into OUT, the training set of the nodule detector or the findings model."""
    from medcnn.evaluation.chest_xray_sets import detector_manifest, findings_data

    sources = [_folder_prefix(s) for s in sets]
    if kind == "findings":
        n, n_masks = findings_data(out_dir, sources)
        click.echo(f"wrote {n} radiographs ({n_masks} finding masks) to {out_dir / 'labels.csv'}")
    else:
        n, pos = detector_manifest(out_dir, sources, findings=findings_model)
        click.echo(f"wrote {n} cases ({pos} with a nodule) to {out_dir / 'manifest.csv'}")
