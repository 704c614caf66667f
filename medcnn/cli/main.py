"""The ``medcnn`` command line (one entry point; ``medcnn --help`` lists everything).

Errors the user can fix (bad files, bad arguments) print one line and exit 1 (or 2 for usage
errors) without a traceback; ``medcnn --debug ...`` shows tracebacks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from medcnn._version import __version__
from medcnn.errors import MedcnnError

logger = logging.getLogger("medcnn")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Click group that turns medcnn errors into one clean line (traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedcnnError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (OSError, ValueError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("medcnn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn demo -o demo_out                 # every sample case: summary.csv + QC pictures
  medcnn info                             # versions and devices
  medcnn convert scan.dcm_dir scan.nii.gz --spacing 1 --orientation RAS
  medcnn generate brain-tumor -n 100 --seed 1 -o data/brats_synth
""")
@click.version_option(__version__, "-V", "--version", prog_name="medcnn")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """medcnn: deep learning on medical images (CT/MRI volumes and chest X-rays)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _setup_logging(verbose + (2 if debug else 0), quiet)


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn info
""")
def info() -> None:
    """Print versions of medcnn and its main dependencies, and the compute devices."""
    import platform

    import monai
    import nibabel
    import numpy
    import pydicom
    import SimpleITK as sitk
    import torch

    lines = [
        f"medcnn     {__version__}",
        f"python     {platform.python_version()} ({platform.platform()})",
        f"torch      {torch.__version__}",
        f"monai      {monai.__version__}",
        f"numpy      {numpy.__version__}",
        f"nibabel    {nibabel.__version__}",
        f"SimpleITK  {sitk.Version.VersionString()}",
        f"pydicom    {pydicom.__version__}",
        f"cpu        {torch.get_num_threads()} threads, bf16 matmul: {_cpu_bf16()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}     {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
    else:
        lines.append("cuda       not available")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        lines.append("mps        available")
    click.echo("\n".join(lines))


def _cpu_bf16() -> str:
    import torch

    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
        native = "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        native = False
    return f"{'native' if native else 'emulated'} (mkldnn bf16 {'yes' if torch.backends.mkldnn.is_available() else 'no'})"


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn demo                      # writes medcnn_demo/summary.csv and medcnn_demo/qc/*.png
  medcnn demo -o out --data path/to/sample_data
""")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("medcnn_demo"),
              show_default=True, help="Output folder.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=Path("sample_data"),
              show_default=True, help="Sample data folder (the repository's sample_data/).")
def demo(out_dir: Path, data_dir: Path) -> None:
    """Run medcnn on every case of sample_data/: summary table + QC pictures."""
    from medcnn.demo import run_demo, summarize

    rows = run_demo(data_dir, out_dir)
    click.echo(summarize(rows))
    click.echo(f"summary: {out_dir / 'summary.csv'}   QC pictures: {out_dir / 'qc'}/")
    if any(r["status"] == "error" for r in rows):
        sys.exit(1)


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn convert dicom_folder/ ct.nii.gz
  medcnn convert t1.nrrd t1_ras_1mm.nii.gz --spacing 1 --orientation RAS
  medcnn convert cxr.dcm cxr.png
""")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--spacing", type=float, multiple=True, help="Voxel size in mm (once for all axes, or once per axis).")
@click.option("--orientation", default=None, help="Reorient to these axis codes, e.g. RAS or LPS (3D).")
@click.option("--series", default=None, help="SeriesInstanceUID (or index) when a DICOM folder holds several series.")
@click.option("--labels", is_flag=True, help="The image is a label map: nearest-neighbour resampling, integer output.")
def convert(source: Path, dest: Path, spacing: tuple[float, ...], orientation: str | None, series: str | None,
            labels: bool) -> None:
    """Convert SOURCE (any readable scan or DICOM folder) to DEST (.nii.gz, .nrrd, .mha, .png)."""
    import numpy as np
    import torch

    from medcnn.io import load, save
    from medcnn.io.api import SOURCE_KEY

    sp = None if not spacing else (spacing[0] if len(spacing) == 1 else tuple(spacing))
    ser: str | int | None = int(series) if series is not None and series.isdigit() else series
    img = load(source, spacing=sp, orientation=orientation, series=ser, mode="nearest" if labels else "linear")
    data = img.as_tensor()
    if labels:
        data = data.round().to(torch.int32)
    src = img.meta[SOURCE_KEY]
    if sp is None and orientation is None:
        save(data, dest, like=img)
    else:  # write the resampled grid itself
        if dest.name.lower().endswith(".png"):
            raise click.UsageError("--spacing/--orientation output needs a volume format (.nii.gz, .nrrd, .mha)")
        save(data, dest, affine=np.asarray(img.affine))
    click.echo(f"{source} -> {dest} {tuple(img.shape)} ({src['format']})")


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn generate sample -o sample_data                  # regenerate the repository's sample data
  medcnn generate brain-tumor -n 200 --seed 1 -o data/bt --layout nnunet
  medcnn generate alzheimer -n 300 --seed 2 -o data/ad   # BIDS + participants.tsv
  medcnn generate chest-xray -n 1000 --seed 3 -o data/cxr --formats png,png16,dcm1,dcm2
""")
@click.argument("task", type=click.Choice(["sample", "brain-tumor", "alzheimer", "chest-xray"]))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=10, show_default=True, help="Number of cases.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (case i depends only on seed and i).")
@click.option("--layout", default=None, help="brain-tumor: brats2023 | brats2021 | nnunet; alzheimer: bids.")
@click.option("--formats", default=None, help="chest-xray: comma-separated png, png16, dcm1 (MONOCHROME1), dcm2.")
def generate(task: str, out_dir: Path, n: int, seed: int, layout: str | None, formats: str | None) -> None:
    """Generate synthetic training/test data (or the repository's sample data) on real anatomy."""
    from medcnn import synth

    opts: dict = {}
    if layout:
        opts["layout"] = layout
    if formats:
        opts["formats"] = tuple(f.strip() for f in formats.split(",") if f.strip())
    records = synth.generate(task, out_dir, n=n, seed=seed, **opts)
    click.echo(f"wrote {len(records)} {task} case(s) to {out_dir}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="medcnn")


if __name__ == "__main__":  # pragma: no cover
    main()
