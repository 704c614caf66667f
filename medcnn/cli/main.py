"""The ``medcnn`` command line (one entry point; ``medcnn --help`` lists everything).

Errors the user can fix (bad files, bad arguments) print one line and exit 1 (or 2 for usage
errors) without a traceback; ``medcnn --debug ...`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


#: commands whose library code reads images in threads it starts itself, without the caller's context (the
#: training engine's preprocessing): the limit reaches them through the environment fallback
_LIMIT_VIA_ENV = frozenset({"train", "crossval"})


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` for the block, then restore what it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


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
@click.option("--max-memory", metavar="SIZE", default=None,
              help="Refuse images whose header says loading them needs more than SIZE (e.g. 8G, 500M; 'none': no limit). "
                   "Default: $MEDCNN_MAX_MEMORY, else half the physical memory.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool, max_memory: str | None) -> None:
    """medcnn: deep learning on medical images (CT/MRI volumes and chest X-rays)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["max_memory"] = max_memory  # passed on as an argument (predict -> run_batch -> the readers' guard)
    _setup_logging(verbose + (2 if debug else 0), quiet)
    if max_memory is not None:
        from medcnn.io.memory import ENV_VAR, memory_limit_scope

        try:
            ctx.with_resource(memory_limit_scope(max_memory, what="--max-memory"))  # for this command's own thread
        except MedcnnError as exc:
            raise click.BadParameter(str(exc), param_hint="--max-memory") from None
        if ctx.invoked_subcommand in _LIMIT_VIA_ENV:
            ctx.with_resource(_environ(ENV_VAR, max_memory))


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

    from medcnn.device import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    return f"{'native' if native else 'emulated'} (mkldnn bf16 {'yes' if torch.backends.mkldnn.is_available() else 'no'})"


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn demo                      # the installed sample cases -> medcnn_demo/summary.csv, medcnn_demo/qc/*.png
  medcnn demo -o out --data path/to/sample_data
""")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("medcnn_demo"),
              show_default=True, help="Output folder.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Sample data folder (default: the sample cases installed with medcnn).")
def demo(out_dir: Path, data_dir: Path | None) -> None:
    """Run medcnn on every case of sample_data/: summary table + QC pictures."""
    from medcnn.demo import run_demo, summarize

    if data_dir is None:  # found from the package, whatever the current folder
        from medcnn.sample_data import sample_data_dir

        data_dir = sample_data_dir()
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
  medcnn convert -i dicom_folder/ -o ct.nii.gz
""")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="SOURCE DEST")
@click.option("-i", "--input", "source_opt", type=click.Path(path_type=Path), default=None, help="SOURCE, as an option.")
@click.option("-o", "--output", "dest_opt", type=click.Path(path_type=Path), default=None, help="DEST, as an option.")
@click.option("--spacing", type=float, multiple=True, help="Voxel size in mm (once for all axes, or once per axis).")
@click.option("--orientation", default=None, help="Reorient to these axis codes, e.g. RAS or LPS (3D).")
@click.option("--series", default=None, help="SeriesInstanceUID (or index) when a DICOM folder holds several series.")
@click.option("--labels", is_flag=True, help="The image is a label map: nearest-neighbour resampling, integer output.")
def convert(paths: tuple[Path, ...], source_opt: Path | None, dest_opt: Path | None, spacing: tuple[float, ...],
            orientation: str | None, series: str | None, labels: bool) -> None:
    """Convert SOURCE (any readable scan or DICOM folder) to DEST (.nii.gz, .nrrd, .mha, .png)."""
    import numpy as np
    import torch

    from medcnn.io import load, save
    from medcnn.io.api import SOURCE_KEY

    rest = list(paths)
    source = source_opt if source_opt is not None else (rest.pop(0) if rest else None)
    dest = dest_opt if dest_opt is not None else (rest.pop(0) if rest else None)
    if source is None or dest is None or rest:
        raise click.UsageError("give SOURCE and DEST once each: medcnn convert SOURCE DEST (or -i SOURCE -o DEST)")
    if any(not (v > 0 and np.isfinite(v)) for v in spacing):  # load() reads <= 0 as "keep this axis"
        raise click.BadParameter(f"voxel sizes must be positive mm, got {' '.join(f'{v:g}' for v in spacing)}",
                                 param_hint="--spacing")
    sp = None if not spacing else (spacing[0] if len(spacing) == 1 else tuple(spacing))
    ser: str | int | None = int(series) if series is not None and series.isdigit() else series
    img = load(source, spacing=sp, orientation=orientation, series=ser, mode="nearest" if labels else "linear")
    data = img.as_tensor()
    if labels:
        data = data.round().to(torch.int32)
    src = img.meta[SOURCE_KEY]
    if dest.name.lower().endswith((".png", ".jpg", ".jpeg")) and not labels:
        from medcnn.io.api import display_pixels

        data = display_pixels(data, dest)  # radiograph grey levels -> 8/16-bit PNG values
    from medcnn.io.slicer import is_seg_nrrd

    if is_seg_nrrd(dest):  # Slicer segmentation: segment names (kept from a .seg.nrrd source) and colours
        from medcnn import qc
        from medcnn.io.api import write_seg_nrrd

        if not labels:
            raise click.UsageError(f"{dest}: a .seg.nrrd holds a label map; add --labels")
        names = {int(sg["value"]): sg["name"] for sg in img.meta.get("segments", [])}
        values = sorted(names) or [int(v) for v in torch.unique(data).tolist() if v != 0]
        colours = {int(sg["value"]): tuple(sg["color"]) for sg in img.meta.get("segments", []) if len(sg["color"]) == 3}
        write_seg_nrrd(data, dest, img if sp is None and orientation is None else None,
                       affine=None if sp is None and orientation is None else np.asarray(img.affine),
                       names=names or {v: f"Label {v}" for v in values},
                       colours={v: colours.get(v, qc.label_colour(v)) for v in values})
    elif sp is None and orientation is None:
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
  medcnn generate brain-tumor -n 1280 --seed 1 -o data/bt_train1280 --workers 2   # the bundled model's data
  medcnn generate alzheimer -n 300 --seed 2 -o data/ad --workers 2   # BIDS + participants.tsv
  medcnn generate chest-xray -n 1000 --seed 3 -o data/cxr --formats png,png16,dcm-mono1,dcm-mono2
  medcnn generate chest-xray -n 3000 --seed 7 -o data/cxr_nod --prevalence Nodule=0.6   # nodule-rich
  medcnn generate prompt -n 4000 --seed 1 -o data/prompt_train   # 2D images + object label maps
  medcnn generate ct-organs -n 60 --seed 4 -o data/ct --workers 2   # abdominal CT (HU), 8 organ labels, nnU-Net layout
  medcnn generate ct-organs -n 5 --seed 9 -o data/ct_dcm --dicom    # + dicom/CT_XXXXX/ series of each image
""")
@click.argument("task", type=click.Choice(["sample", "brain-tumor", "alzheimer", "chest-xray", "ct-organs", "prompt"]))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=10, show_default=True, help="Number of cases.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (case i depends only on seed and i).")
@click.option("--layout", default=None, help="brain-tumor: brats2023 | brats2021 | nnunet; alzheimer: bids.")
@click.option("--formats", default=None, help="chest-xray: comma-separated png, png16, dcm-mono1 (MONOCHROME1), dcm-mono2.")
@click.option("--prevalence", default=None,
              help="chest-xray: probability of each finding, one number for all or FINDING=P,... (others 0.3).")
@click.option("--dicom", is_flag=True, help="ct-organs: also write each image as a DICOM series (one file per slice).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (not for sample; the cases do not depend on it).")
def generate(task: str, out_dir: Path, n: int, seed: int, layout: str | None, formats: str | None,
             prevalence: str | None, dicom: bool, workers: int) -> None:
    """Generate synthetic training/test data (or the repository's sample data) on real anatomy."""
    from medcnn import synth

    opts: dict = {}
    if workers > 1:
        if not synth.has_workers(task):
            raise click.UsageError(f"--workers: {task} generates in one process; drop the option")
        opts["workers"] = workers
    if layout:
        opts["layout"] = layout
    if formats:
        opts["formats"] = tuple(f.strip() for f in formats.split(",") if f.strip())
    if prevalence:
        if task != "chest-xray":
            raise click.UsageError(f"--prevalence is a chest-xray option, not {task}'s")
        opts["prevalence"] = _parse_prevalence(prevalence)
    if dicom:
        if task != "ct-organs":
            raise click.UsageError(f"--dicom is a ct-organs option, not {task}'s")
        opts["dicom"] = True
    try:
        records = synth.generate(task, out_dir, n=n, seed=seed, **opts)
    except ValueError as exc:
        if not prevalence or "prevalence" not in str(exc):
            raise
        raise click.BadParameter(str(exc), param_hint="--prevalence") from None
    click.echo(f"wrote {len(records)} {task} case(s) to {out_dir}")


def _parse_prevalence(text: str) -> float | dict[str, float]:
    """``"0.5"`` -> 0.5; ``"Nodule=0.6,Effusion=0.4"`` -> ``{"Nodule": 0.6, "Effusion": 0.4}``."""
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, value = part.partition("=")
            out[name.strip()] = float(value)
        return out
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a probability or FINDING=P pairs, e.g. Nodule=0.6,Effusion=0.4",
                                 param_hint="--prevalence") from None


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn predict brain-tumor sample_data/brain-tumor -o out/bt
  medcnn predict brain-tumor BraTS-GLI-00001-000/ nnunet_flat_folder/ -o out --device cuda
  medcnn predict brain-tumor cases/ -o out --model runs/bt/best.pt --overwrite
  torchrun --nproc_per_node 2 -m medcnn.cli.main predict brain-tumor cases/ -o out   # shard over ranks
  medcnn predict brain-tumor cases/ -o out --shard 2/8    # one of 8 cluster jobs, then: medcnn merge-summaries out
  medcnn predict alzheimer bids_dataset/ -o out/ad
  medcnn predict chest-xray sample_data/chest-xray/images -o out/cxr
  medcnn predict chest-xray dicoms/ -o out/cxr --model runs/cxr_lungs/best.pt   # own lung model, bundled findings
  medcnn predict brain-tumor case/ -o out --dicom-seg   # case/CASE-t1n/ ... DICOM series: + out/case.seg.dcm
  medcnn predict brain-tumor cases/ -o out --model nnUNet_results/Dataset137_BraTS/nnUNetTrainer__nnUNetPlans__3d_fullres
  medcnn predict brain-tumor cases/ -o out --model my_bundle/   # MONAI bundle: configs/inference.json + models/model.pt
  medcnn predict brain-tumor cases/ -o out --model weights.pt --arch unet --arch-args in_channels=4,out_channels=4 --model-config m.yaml
\b
Outputs: OUTDIR/summary.csv (a row per case), per-case result files, OUTDIR/qc/*.png, OUTDIR/run.json.
--dicom-seg: OUTDIR/<case>.seg.dcm, a DICOM Segmentation referencing the reference image when it is DICOM:
brain-tumor the first contrast's (t1n) series, chest-xray the radiograph (lungs and heart segments).
--shard K/N (K from 1): the K-th of N parts of the cases (sorted by case id, every N-th from the K-th), for
cluster job arrays (Slurm: --array=1-N, --shard $SLURM_ARRAY_TASK_ID/N); its summary is
OUTDIR/summary.shard-K-of-N.csv (written when the shard ends) and run.shard-K-of-N.json; shards may run at once
into one OUTDIR. medcnn merge-summaries OUTDIR joins them into summary.csv.
Exit status: 0 all cases ok or skipped, 1 some case failed (the others are still done), 2 usage error.
""")
@click.argument("pipeline")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-i", "--input", "more_inputs", multiple=True, type=click.Path(path_type=Path),
              help="An input (repeatable), as nnU-Net's and TotalSegmentator's -i; joins the positional INPUTs.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--model", "model_ref", multiple=True,
              help="Bundled model name or checkpoint path (default: the pipeline's). chest-xray: repeat it for the "
                   "findings, the lung and the nodule model; each replaces the bundled model of its kind "
                   "(the bundled nodule detector joins the bundled findings model only).")
@click.option("--arch", default=None, help="--model is a plain state dict for this medcnn.models network (unet, "
              "segresnet, dynunet...); with --arch-args and --model-config.")
@click.option("--arch-args", "arch_args", multiple=True, help="The --arch network's arguments: a JSON object or "
              "key=value items (values as YAML: channels=[16,32,64]), repeatable.")
@click.option("--model-config", "model_config", type=click.Path(path_type=Path), default=None,
              help="YAML with the foreign model's preprocess (spacing, orientation, normalize...), inference (roi_size...) "
                   "and labels sections (state dicts, MONAI bundles), or nnU-Net options (folds, checkpoint, label_map).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N], gpu[:N] (= cuda) or mps.")
@click.option("--overwrite", is_flag=True, help="Redo cases whose outputs already exist.")
@click.option("--statistics", is_flag=True, help="Also write <case>_statistics.json: per label its voxels, volume (mL) and "
              "each input channel's intensity mean, std and percentiles inside it (label-map pipelines).")
@click.option("--qc-convention", type=click.Choice(["radiological", "neurological"]), default="radiological",
              show_default=True, help="QC pictures of volumes: patient's left on the image's right (radiological) "
                                      "or on its left (neurological).")
@click.option("--dicom-seg", is_flag=True, help="Also write <case>.seg.dcm (DICOM SEG) when the reference image is "
              "DICOM (brain-tumor: the t1n series; chest-xray: the radiograph).")
@click.option("--shard", default=None, metavar="K/N", callback=lambda ctx, param, v: _shard_option(v),
              help="Only the K-th (from 1) of N parts of the cases, for cluster job arrays; join the parts with "
                   "medcnn merge-summaries OUTDIR.")
def predict(pipeline: str, inputs: tuple[Path, ...], more_inputs: tuple[Path, ...], out_dir: Path, model_ref: tuple[str, ...],
            arch: str | None, arch_args: tuple[str, ...], model_config: Path | None,
            device: str, overwrite: bool, statistics: bool, qc_convention: str, dicom_seg: bool,
            shard: tuple[int, int] | None) -> None:
    """Run PIPELINE (brain-tumor, alzheimer, chest-xray) on every case found in INPUTS."""
    import dataclasses

    from medcnn.batch import run_batch
    from medcnn.pipelines import available, get_pipeline, load_models

    if pipeline not in available():
        raise click.UsageError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(available())}")
    pipe = get_pipeline(pipeline)
    if dicom_seg:
        if not any(f.name == "dicom_seg" for f in dataclasses.fields(pipe)):
            raise click.UsageError(f"--dicom-seg: the {pipeline} pipeline writes no label map")
        pipe = dataclasses.replace(pipe, dicom_seg=True)
    inputs = (*inputs, *more_inputs)
    if not inputs:
        raise click.UsageError("give the input(s): medcnn predict PIPELINE INPUT... or -i INPUT")
    if statistics:
        if not any(f.name == "statistics" for f in dataclasses.fields(pipe)):
            raise click.UsageError(f"--statistics: the {pipeline} pipeline writes no per-label statistics (brain-tumor does)")
        pipe = dataclasses.replace(pipe, statistics=True)
    if any(f.name == "qc_convention" for f in dataclasses.fields(pipe)):
        pipe = dataclasses.replace(pipe, qc_convention=qc_convention)
    elif qc_convention != "radiological":
        raise click.UsageError(f"--qc-convention: the {pipeline} pipeline's pictures are radiographs, shown as stored")
    dev_name = device = _device_name(device, "--device")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        import torch

        dev_name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if arch or arch_args or model_config:
        model, info = _foreign_model(pipe, model_ref, arch, arch_args, model_config, dev_name)
    else:
        model, info = load_models(pipe, list(model_ref) or None, device=dev_name)
    rows = run_batch(pipe, model, list(inputs), out_dir, overwrite=overwrite, model_info=info, device=dev_name,
                     shard=shard, max_memory=click.get_current_context().obj.get("max_memory"))
    if int(os.environ.get("RANK", "0")) == 0:
        from medcnn.batch import shard_part_name

        counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "error")}
        summary = out_dir / (shard_part_name(shard) if shard else "summary.csv")
        click.echo(f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} failed; summary: {summary}")
        if counts["error"]:
            sys.exit(1)


def _foreign_model(pipe: Any, model_ref: tuple[str, ...], arch: str | None, arch_args: tuple[str, ...],
                   model_config: Path | None, device: str) -> tuple[Any, dict[str, Any]]:
    """``--model`` with ``--arch`` / ``--arch-args`` / ``--model-config``: one foreign model for a one-model pipeline."""
    from medcnn.predictor import load_model

    if len(model_ref) != 1:
        raise click.UsageError("--arch / --arch-args / --model-config need exactly one --model (the weights file or folder)")
    if hasattr(pipe, "load_models"):
        raise click.UsageError(f"--arch / --model-config: the {pipe.name} pipeline runs several models; load them in Python")
    if arch_args and not arch:
        raise click.UsageError("--arch-args needs --arch NAME")
    model = load_model(model_ref[0], device=device, arch=arch, arch_args=list(arch_args) or None, config=model_config)
    return model, {"name": model_ref[0], **model.provenance()}


def _shard_option(value: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` -> ``(K, N)``; a usage error naming the option otherwise."""
    if value is None:
        return None
    from medcnn.batch import parse_shard

    try:
        return parse_shard(value, what="--shard")
    except MedcnnError as exc:
        raise click.BadParameter(str(exc).removeprefix("--shard: "), param_hint="--shard") from None


def _config_path(config: Path) -> Path:
    """CONFIG as given, or a bundled config of that name (``configs/brain_tumor.yaml``, ``brain_tumor``) when
    no such file exists here: the bundled configs work from any folder after ``pip install``."""
    if config.exists():
        return config
    from medcnn.configs import config_dir

    name = config.name if config.name.endswith((".yaml", ".yml")) else f"{config.name}.yaml"
    bundled = config_dir() / name
    return bundled if bundled.is_file() else config


def _device_name(value: str, option: str) -> str:
    """``--device`` value in torch's spelling (``gpu[:N]`` -> ``cuda[:N]``); a usage error otherwise."""
    from medcnn.device import normalize_device_name

    try:
        return normalize_device_name(value)
    except MedcnnError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn prompt chest.png --box 120,80,400,300 -o lung.png                 # bundled light model (CPU, ms)
  medcnn prompt chest.png --box 120,80,400,300 -o lung.png --model medsam_vit_b.pth
  medcnn prompt ct.nii.gz --box 40,60,30,120,150,70 -o organ.nii.gz
  medcnn prompt ct.nii.gz --box 40,60,30,120,150,70 --points 80,100,50:0 -o organ.nii.gz --model m.pth
  medcnn prompt slice.png --box 10,10,60,90 --box 70,20,120,80 -o two.png --model m.pth   # label map 1, 2
  medcnn prompt t1.nii.gz --box 30,40,50,90,100,80 --exact-box -o hippo.nii.gz   # box from an annotation
  medcnn prompt ct_series/ --box 40,60,30,120,150,70 -o organ.seg.dcm   # DICOM SEG referencing the series
\b
Coordinates index the image as medcnn.load returns it: (row, col) for 2D, the file's voxel indices (i, j, k)
for volumes; boxes are min,...,max with the max exclusive. A point is i,j[,k] with ':0' for background.
--box-order xyxy takes 2D boxes in SAM/MedSAM order x0,y0,x1,y1 (x = column, y = row) instead of i0,j0,i1,j1.
Single-slice DICOM: a radiograph (CR, DX, MG, XA, ...; or a file without patient geometry) is a 2D image
(row, col); one CT/MR/PET slice is a volume of one slice in voxel order (i = column, j = row, k = 0), so its
box is i0,j0,0,i1,j1,1 (medcnn convert slice.dcm slice.nii.gz keeps that voxel order).
A volume is segmented slice by slice from each box's central slice along --slice-axis (default: the axis with
the coarsest spacing). The mask lands on the input's own grid (PNG for 2D, a label volume otherwise) with a
QC picture next to it (OUT stem + _qc.png).
""")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option("-i", "--input", "image_opt", type=click.Path(path_type=Path), default=None,
              help="The image, instead of the positional IMAGE.")
@click.option("--box", "boxes", multiple=True, metavar="I0,J0[,K0],I1,J1[,K1]", help="Box prompt (repeat for several objects).")
@click.option("--box-order", type=click.Choice(["ijk", "xyxy"]), default="ijk", show_default=True,
              help="ijk: i0,j0[,k0],i1,j1[,k1] (rows first); xyxy: 2D SAM-order x0,y0,x1,y1 (x = column).")
@click.option("--points", "points", multiple=True, metavar="I,J[,K][:0|1]", help="Point prompt (repeatable); :0 = background.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Mask file to write (.png, .nii.gz, .nrrd, .mha; .seg.dcm: DICOM SEG, for DICOM inputs).")
@click.option("--model", "model_ref", default=None, help="medcnn-prompt (default, bundled), a checkpoint from medcnn train with task: prompt, or a MedSAM/SAM .pth.")
@click.option("--slice-axis", type=click.IntRange(0, 2), default=None, help="Volumes: axis to propagate along.")
@click.option("--exact-box", is_flag=True, help="Each box is its object's exact bounding box (from an annotation or a "
              "mask), not drawn by hand: the mask stays inside it, and the bundled model uses its exact-box mode.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N], gpu[:N] (= cuda) or mps.")
@click.option("--qc-convention", type=click.Choice(["radiological", "neurological"]), default="radiological",
              show_default=True, help="Volumes' QC picture: patient's left on the image's right (radiological) or left.")
def prompt(image: Path | None, image_opt: Path | None, boxes: tuple[str, ...], box_order: str, points: tuple[str, ...],
           out: Path, model_ref: str | None, slice_axis: int | None, exact_box: bool, device: str,
           qc_convention: str) -> None:
    """Segment what a box or points point at in IMAGE (MedSAM-style promptable segmentation)."""
    from medcnn.prompt import PromptableSegmenter
    from medcnn.prompt.apply import prompt_file

    if not boxes and not points:
        raise click.UsageError("give at least one --box or --points")
    if exact_box and not boxes:
        raise click.UsageError("--exact-box describes a --box; give one")
    if (image is None) == (image_opt is None):
        raise click.UsageError("give the image once: medcnn prompt IMAGE ... or -i IMAGE")
    image = image if image is not None else image_opt
    device = _device_name(device, "--device")
    box_list = [_numbers(b, "--box") for b in boxes]
    if box_order == "xyxy":
        from medcnn.prompt.segmenter import xyxy_to_ij

        if any(len(b) != 4 for b in box_list):
            raise click.BadParameter("--box-order xyxy takes 2D boxes of 4 numbers x0,y0,x1,y1", param_hint="--box")
        box_list = [xyxy_to_ij(b) for b in box_list]
    pts, labs = [], []
    for p in points:
        coords, _, lab = p.partition(":")
        pts.append(_numbers(coords, "--points"))
        if lab not in ("", "0", "1"):
            raise click.BadParameter(f"point label must be 0 or 1, got {lab!r}", param_hint="--points")
        labs.append(int(lab or 1))
    seg = PromptableSegmenter.from_pretrained(model_ref, device=device)
    try:
        info = prompt_file(image, out, boxes=box_list or None, points=pts or None, labels=labs or None, model=seg,
                           slice_axis=slice_axis, exact_box=exact_box, qc_convention=qc_convention)
    except MedcnnError as exc:
        if getattr(exc, "path", None) == str(out):  # -o names an output the image cannot have: a usage error
            raise click.UsageError(str(exc)) from None
        raise  # an unusable IMAGE (InputError is a ValueError too): one line, exit 1
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    extra = f", {info['volume_ml']} mL" if "volume_ml" in info else ""
    click.echo(f"{info['objects']} object(s), {info['voxels']} voxels{extra} -> {info['out']} (QC: {info.get('qc', 'none')})")


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn evaluate out/bt data/brats_synth -o metrics.csv       # folders: pairs cases by id
  medcnn evaluate pred.nii.gz ref-seg.nii.gz -o metrics.csv      # one case
  medcnn evaluate out/ labelsTr/ -o m.csv --region WT=1,2,3 --region TC=1,3 --region ET=3 --nsd-tolerance 2
  medcnn evaluate out/bt BraTS2021_Training_Data/ -o m.csv --labels brats2021    # references with ET = 4
  medcnn evaluate nnunet_out/ BraTS2021_Training_Data/ -o m.csv --pred-labels nnunet-brats --labels brats2021
\b
Writes one row per case and region (dice, hd95_mm, nsd, pred_ml, ref_ml, status, error) and a mean row
per region. BraTS conventions: empty vs empty scores Dice 1, NSD 1, HD95 0.
Label conventions (NCR, ED, ET): brats2023 1, 2, 3 (medcnn's output); brats2021 1, 2, 4; nnunet-brats 2, 1, 3;
or MAP.yaml ({NCR: 1, ED: 2, ET: 4} or {4: 3, ...}). Without --labels, a reference value outside the regions'
labels fails the case naming it (only a warning with your own --region).
""")
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("ref", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_csv", type=click.Path(path_type=Path), required=True, help="Metrics CSV to write.")
@click.option("--region", "regions", multiple=True, metavar="NAME=L1,L2",
              help="Region as a set of labels (repeatable; default BraTS WT/TC/ET).")
@click.option("--nsd-tolerance", type=float, default=1.0, show_default=True, help="NSD tolerance in mm.")
@click.option("--labels", "ref_labels", default=None, metavar="brats2021|brats2023|nnunet-brats|MAP.yaml",
              help="Label convention of the references, remapped onto BraTS 2023 values (1 NCR, 2 ED, 3 ET).")
@click.option("--pred-labels", default=None, metavar="brats2021|brats2023|nnunet-brats|MAP.yaml",
              help="Label convention of the predictions (default: medcnn's BraTS 2023 values).")
def evaluate(pred: Path, ref: Path, out_csv: Path, regions: tuple[str, ...], nsd_tolerance: float,
             ref_labels: str | None, pred_labels: str | None) -> None:
    """Dice, HD95 and NSD of predicted label maps PRED against references REF, per case and region."""
    from medcnn.metrics.evaluate import evaluate_folders
    from medcnn.metrics.segmentation import BRATS_REGIONS

    reg = dict(BRATS_REGIONS)
    if regions:
        reg = {}
        for spec in regions:
            name, _, labels = spec.partition("=")
            try:
                reg[name.strip()] = tuple(int(v) for v in labels.split(",") if v.strip())
            except ValueError:
                raise click.UsageError(f"--region {spec!r}: expected NAME=1,2,3") from None
            if not name.strip() or not reg[name.strip()]:
                raise click.UsageError(f"--region {spec!r}: expected NAME=1,2,3")
    from medcnn.metrics.labels import label_mapping

    for opt, spec in (("--labels", ref_labels), ("--pred-labels", pred_labels)):
        if spec is not None:
            try:
                label_mapping(spec)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=opt) from None
    rows = evaluate_folders(pred, ref, out_csv, regions=reg, nsd_tolerance_mm=nsd_tolerance, labels=ref_labels,
                            pred_labels=pred_labels, on_unknown="warn" if regions else "error")
    for r in rows:
        if r["case"] == "mean":
            click.echo(f"{r['region']:>4}: Dice {float(r['dice']):.4f}  HD95 {float(r['hd95_mm']):.2f} mm  NSD {float(r['nsd']):.4f}")
    click.echo(f"metrics: {out_csv}")
    if any(r.get("status") not in ("ok",) and r["case"] != "mean" for r in rows):
        sys.exit(1)


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn train configs/brain_tumor.yaml --set data.source=data/brats_synth -o runs/bt
  medcnn train configs/brain_tumor.yaml -o runs/bt --resume           # continue after a crash
  medcnn train configs/brain_tumor.yaml -o runs/bt --overwrite        # replace the trained run in runs/bt
  medcnn train configs/brain_tumor.yaml --set train.epochs=2 --set model.name=unet
  torchrun --nproc_per_node 2 -m medcnn.cli.main train configs/brain_tumor.yaml -o runs/ddp
  medcnn train data/Dataset001 --auto -o runs/auto      # plan (medcnn plan) into runs/auto/plan.yaml, then train it
  medcnn train data/Dataset001 --auto --device cuda --memory-gb 20 --set train.epochs=50 -o runs/auto
""")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--auto", is_flag=True, help="CONFIG is a dataset folder in nnU-Net layout: plan it into "
              "RUNDIR/plan.yaml (with fingerprint.json) and train that plan.")
@click.option("--device", "plan_device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="--auto: device the plan's memory budget is for (default: cuda when available).")
@click.option("--memory-gb", type=float, default=None, help="--auto: training memory budget of the plan.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (dotted key; YAML value).")
@click.option("--resume", is_flag=True, help="Continue from RUNDIR/last.pt.")
@click.option("--overwrite", is_flag=True,
              help="Replace a trained run in RUNDIR (its best.pt/last.pt are removed just before the first epoch); "
                   "without it or --resume, a folder holding one is refused.")
@click.option("-o", "--output", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder (default runs/<config name>).")
def train(config: Path, overrides: tuple[str, ...], resume: bool, overwrite: bool, run_dir: Path | None,
          auto: bool, plan_device: str | None, memory_gb: float | None) -> None:
    """Train a model from a YAML CONFIG (also under torchrun for DDP), or plan and train a dataset (--auto)."""
    from medcnn.engine import train as run_training

    if resume and overwrite:
        raise click.UsageError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    if auto:
        from medcnn.engine.plan import plan_dataset

        if not config.is_dir():
            raise click.UsageError(f"--auto needs a dataset folder (dataset.json, imagesTr, labelsTr), got {config}")
        run_dir = run_dir or Path("runs") / config.resolve().name
        plan_path = run_dir / "plan.yaml"
        if not (resume and plan_path.exists()):
            if plan_device is None:
                import torch

                plan_device = "cuda" if torch.cuda.is_available() else "cpu"
            if int(os.environ.get("RANK", "0")) != 0:
                # the plan is deterministic: every rank makes its own instead of reading rank 0's half-written file
                import tempfile

                plan_path = Path(tempfile.mkdtemp(prefix="medcnn-plan-")) / "plan.yaml"
            plan_dataset(config, plan_path, device=plan_device, memory_gb=memory_gb,
                         gpus=int(os.environ.get("WORLD_SIZE", "1")))
        config = plan_path
    config = _config_path(config)
    result = run_training(config, list(overrides), run_dir, resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"best {result['best']:.4f} at epoch {result['best_epoch']}; outputs in {result['run_dir']}")


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn crossval configs/alzheimer.yaml --folds 5 --set data.source=data/ad_train -o runs/ad_cv
\b
Trains one model per fold (folds split by subject, stratified, seeded) and writes crossval.csv (per fold and
pooled balanced accuracy, AUROC, sensitivity, specificity, ECE), predictions.csv, roc.png, confusion.png and
reliability.png (calibration of the pooled probabilities).
""")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Number of folds.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("runs/crossval"),
              show_default=True, help="Output folder.")
@click.option("--resume", is_flag=True, help="Continue folds from their last.pt.")
def crossval(config: Path, folds: int, overrides: tuple[str, ...], out_dir: Path, resume: bool) -> None:
    """K-fold cross-validation of a classification CONFIG with per-fold and pooled metrics."""
    from medcnn.engine.crossval import cross_validate

    config = _config_path(config)
    result = cross_validate(config, folds, list(overrides), out_dir, resume=resume)
    pooled = result.get("pooled", {})
    click.echo("pooled: " + "  ".join(f"{k} {v:.4f}" for k, v in pooled.items() if isinstance(v, float)))
    click.echo(f"outputs in {out_dir}")


@cli.command(context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn export runs/bt/best.pt -o medcnn/data/models/brain_tumor.pt --check brain-tumor sample_data/brain-tumor
  medcnn export runs/bt/best.pt -o bt_tta.pt --set inference.tta=true --set inference.overlap=0.5
  medcnn export brain-tumor --format onnx -o bt.onnx            # bundled network -> bt.onnx + bt.onnx.json
  medcnn export runs/cxr/best.pt --format torchscript -o cxr.ts.pt
\b
--check runs the exported model through the pipeline on the given cases and records the Dice per case in
the checkpoint (tests re-run it to prove the shipped model still scores what it says).
--format onnx|torchscript writes the network alone ((B, C, *spatial) preprocessed input -> logits; batch axis
dynamic, spatial axes too for U-Nets) and FILE.json beside it: the preprocessing/inference contract (spacing,
orientation, normalisation, roi size, overlap, TTA, label names, input channels in order, output activation).
ONNX needs the export extra: pip install 'medcnn[export]'. CHECKPOINT may be a bundled model name.
""")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path), required=True, help="Exported file.")
@click.option("--format", "fmt", type=click.Choice(["medcnn", "onnx", "torchscript"]), default="medcnn", show_default=True,
              help="medcnn: compact medcnn checkpoint; onnx / torchscript: the network + FILE.json contract.")
@click.option("--full-precision", is_flag=True, help="Keep float32 weights (default stores fp16, half the size).")
@click.option("--check", nargs=2, default=None, metavar="PIPELINE CASES", help="Score the export on labelled cases.")
@click.option("--set", "overrides", multiple=True, metavar="inference.KEY=VALUE",
              help="Change an inference setting of the export (tta, overlap, mode, min_component_ml, ...).")
def export(checkpoint: Path, dest: Path, fmt: str, full_precision: bool, check: tuple[str, str] | None,
           overrides: tuple[str, ...]) -> None:
    """Export a trained CHECKPOINT as a compact inference checkpoint (what ships as a bundled model), ONNX or TorchScript."""
    from medcnn.engine.checkpoint import checkpoint_path, export_checkpoint, load_checkpoint, save_checkpoint
    from medcnn.engine.config import parse_overrides

    checkpoint = checkpoint_path(checkpoint) or checkpoint  # a bundled name is accepted too
    if fmt != "medcnn":
        from medcnn.engine.export import contract_path, export_network

        if full_precision or check or overrides:
            raise click.UsageError("--full-precision, --check and --set apply to --format medcnn only")
        export_network(checkpoint, dest, fmt)
        click.echo(f"exported {checkpoint} -> {dest} ({dest.stat().st_size / 2**20:.1f} MiB, {fmt}) + {contract_path(dest)}")
        return

    over = parse_overrides(list(overrides))
    if set(over) - {"inference"}:
        raise click.UsageError(f"--set: only inference.* settings can change at export, not {sorted(set(over) - {'inference'})}")
    export_checkpoint(checkpoint, dest, half=not full_precision, inference=over.get("inference"))
    if check:
        from medcnn.predictor import load_model
        from medcnn.validation import score_cases

        pipeline, cases = check
        scores = score_cases(pipeline, load_model(dest), Path(cases))
        ck = load_checkpoint(dest)
        ck["sample_scores"] = {"pipeline": pipeline, "cases": str(cases), "scores": scores}
        save_checkpoint(ck, dest)
        for case, s in scores.items():
            click.echo(f"{case}: " + "  ".join(f"{k} {v:.4f}" for k, v in s.items()))
    click.echo(f"exported {checkpoint} -> {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")


@cli.command("ood-fit", context_settings=CONTEXT, epilog="""\b
Examples:
  medcnn generate alzheimer -n 40 --seed 3101 -o data/ad_ood
  medcnn ood-fit alzheimer data/ad_ood -o alzheimer_ood.pt            # the bundled model + OOD statistics
  medcnn ood-fit brain-tumor data/bt_ood -o bt.pt --model runs/bt/best.pt
  medcnn ood-fit chest-xray data/cxr_ood/images -o chest_xray.pt       # written into the findings checkpoint
\b
DATA: held-out cases of the model's training generator (a seed it never trained on). The copy keeps the
weights byte for byte and adds an `ood` section; `medcnn predict` then fills the ood and ood_score columns.
""")
@click.argument("pipeline")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--model", "model_ref", multiple=True, help="Bundled model name or checkpoint path, as for predict.")
@click.option("--quantile", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.95, show_default=True,
              help="Fraction of the held-out cases (out of fold) kept below the threshold.")
def ood_fit(pipeline: str, data: tuple[Path, ...], dest: Path, model_ref: tuple[str, ...], quantile: float) -> None:
    """Fit a checkpoint's out-of-distribution statistics on held-out cases; write a copy that carries them."""
    from medcnn.pipelines import available, fit_ood_checkpoint, get_pipeline

    if pipeline not in available():
        raise click.UsageError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(available())}")
    sec = fit_ood_checkpoint(get_pipeline(pipeline), list(data), dest, list(model_ref) or None, quantile=quantile)
    click.echo(f"fitted OOD statistics on {sec['n_fit']} case(s) ({len(sec['stat_names'])} image statistics"
               f"{', features of ' + str(sec['layer']) if sec.get('layer') else ''}); threshold {sec['threshold']:.3f}, "
               f"{100 * sec['oof_flagged']:.1f}% of them flagged out of fold -> {dest}")


# Commands kept in their own modules register here, one line each (keep their heavy imports inside the command).
from medcnn.cli.merge import merge_summaries as _merge_summaries; cli.add_command(_merge_summaries)  # noqa: E402,E702
from medcnn.cli.evaluate_run import evaluate_run as _evaluate_run; cli.add_command(_evaluate_run)  # noqa: E402,E702
from medcnn.cli.calibrate import calibrate as _calibrate; cli.add_command(_calibrate)  # noqa: E402,E702
from medcnn.cli.merge_sets import merge_sets as _merge_sets; cli.add_command(_merge_sets)  # noqa: E402,E702
from medcnn.cli.plan import plan as _plan; cli.add_command(_plan)  # noqa: E402,E702


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="medcnn")


if __name__ == "__main__":  # pragma: no cover
    main()
