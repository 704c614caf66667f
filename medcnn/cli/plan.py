"""`medcnn plan`: fingerprint a dataset in nnU-Net layout and write an editable training config."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  medcnn plan data/Dataset001 -o plan.yaml                       # CPU, 2 GB budget
  medcnn plan data/Dataset001 -o plan.yaml --device cuda --memory-gb 20 --gpus 4
  medcnn train plan.yaml -o runs/auto                            # train the plan as written
""")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("plan.yaml"), show_default=True,
              help="Plan YAML (fingerprint.json is written beside it).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--memory-gb", type=float, default=None, help="Training memory budget (default 2 on cpu, 8 on cuda).")
@click.option("--epochs", type=int, default=100, show_default=True)
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs for DDP: the batch is split per GPU.")
def plan(dataset: Path, output: Path, device: str, memory_gb: float | None, epochs: int, gpus: int) -> None:
    """Fingerprint DATASET (dataset.json, imagesTr, labelsTr) and write a training plan."""
    from medcnn.engine.plan import plan_dataset

    cfg = plan_dataset(dataset, output, device=device, memory_gb=memory_gb, epochs=epochs, gpus=gpus)
    click.echo(f"plan: spacing {cfg['preprocess']['spacing']} patch {cfg['train']['patch_size']} "
               f"batch {cfg['train']['batch_size']} -> {output}")
