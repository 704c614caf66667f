"""Helpers of the reliability tests: tiny checkpoints made without training, small good volumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

#: ``--set`` overrides that make each pipeline's config tiny (networks of a few hundred weights, coarse grids)
TINY_SETTINGS: dict[str, list[str]] = {
    "brain_tumor.yaml": [
        "model.kwargs.channels=[4,8]", "model.kwargs.strides=[2]", "model.kwargs.num_res_units=0",
        "preprocess.spacing=[6,6,6]", "train.patch_size=[16,16,16]", "inference.roi_size=[16,16,16]",
        "inference.min_component_ml=null",
    ],
    "alzheimer.yaml": ["model.kwargs.channels=[4,8]", "preprocess.spacing=[6,6,6]", "preprocess.size=[16,16,16]"],
    "chest_xray.yaml": ["preprocess.square_size=32"],
    "chest_xray_lungs.yaml": ["preprocess.square_size=32", "train.patch_size=[32,32]", "inference.roi_size=[32,32]"],
}
#: the checkpoints each pipeline runs with: (config, network kwargs replacing the config's, labels extras)
_RECIPES: dict[str, list[tuple[str, str | None, dict]]] = {
    "brain-tumor": [("brain_tumor.yaml", None, {})],
    "alzheimer": [("alzheimer.yaml", None, {})],
    "chest-xray": [
        ("chest_xray.yaml", "compact-cnn", {"multilabel": True}),
        ("chest_xray_lungs.yaml", "unet", {"channels": ["lungs", "heart"], "region_based": True}),
    ],
}
_NETS = {"compact-cnn": {"channels": [4, 8]}, "unet": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run in-process torch work on one thread (the test machine is small and shared: oversubscribed
    threads make tiny networks 5-10x slower); restored afterwards. Autouse where imported."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models(pipeline: str, folder: Path, seed: int = 0) -> list[Path] | None:
    """Untrained (random weights) checkpoints made from the pipeline's own configs, shrunk.

    Returns the checkpoint paths to pass as ``--model`` (several for chest-xray), or ``None`` for a
    pipeline without a recipe here (its bundled model is used instead).
    """
    if pipeline not in _RECIPES:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return [_tiny(cfg, net, extra, folder / f"{Path(cfg).stem}.pt", seed) for cfg, net, extra in _RECIPES[pipeline]]


def tiny_checkpoint(pipeline: str, path: Path, seed: int = 0) -> Path | None:
    """The single tiny checkpoint of ``pipeline`` written to ``path`` (brain-tumor, alzheimer)."""
    made = tiny_models(pipeline, path.parent / f".{path.stem}-tiny", seed)
    if made is None:
        return None
    made[0].replace(path)
    return path


def _tiny(config: str, net_name: str | None, extra: dict, path: Path, seed: int) -> Path:
    from medcnn.engine.checkpoint import save_checkpoint
    from medcnn.engine.schema import load_train_config
    from medcnn.models import create_model

    data = path.parent / "data-dir"
    data.mkdir(exist_ok=True)
    (data / "manifest.csv").write_text("case,subject,image\n")
    source = data / "manifest.csv" if "lungs" in config else data
    cfg = load_train_config(REPO / "configs" / config, [f"data.source={source}", *TINY_SETTINGS[config]])
    sdims = 2 if cfg["preprocess"].get("square_size") else 3
    channels = list(cfg["data"].get("channels") or ["image"])
    classes = list(cfg["data"].get("classes") or [])
    masks = list(extra.get("channels") or [])
    out = len(classes) if cfg["task"] == "classification" else (len(masks) or len(cfg["labels"]["regions"]))
    name = net_name or cfg["model"]["name"]
    kwargs = dict(_NETS[name] if net_name else cfg["model"]["kwargs"], in_channels=len(channels), out_channels=out,
                  spatial_dims=sdims)
    torch.manual_seed(seed)
    net = create_model(name, **kwargs)
    ck = {
        "task": cfg["task"],
        "model": {"name": name, "kwargs": kwargs},
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "preprocess": dict(cfg["preprocess"], in_channels=len(channels), channel_names=channels),
        "inference": dict(cfg["inference"], sw_batch_size=1),
        "labels": {
            "names": {str(k): v for k, v in cfg["labels"]["names"].items()},
            "regions": {k: list(v) for k, v in cfg["labels"]["regions"].items()},
            "region_based": bool(cfg["labels"]["regions"]),
            "classes": classes,
            **extra,
        },
        "metrics": {},
        "training": {"epoch": 0, "name": "tiny-untrained"},
    }
    return save_checkpoint(ck, path)


def head_volume(shape=(20, 24, 20), seed: int = 0, spacing: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy ellipsoid in a dark field (float32 ``shape``) and its RAS affine."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.7
    vol = np.where(inside, 100.0 + 20 * rng.normal(size=shape), 0.0).astype(np.float32)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = -np.array(shape) * spacing / 2
    return vol, aff


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0]) if affine is None else affine), str(path))
    return path


def medcnn_cmd(*args: str) -> list[str]:
    """``python -m medcnn.cli.main ARGS`` with this interpreter."""
    return [sys.executable, "-m", "medcnn.cli.main", *args]


def alzheimer_predict_args(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Two small head volumes and a tiny alzheimer checkpoint under ``tmp_path``: (scans folder, checkpoint, the
    ``predict`` arguments for them)."""
    vol, aff = head_volume()  # 75 KiB to load
    scans = tmp_path / "scans"
    for i in range(2):
        write_nifti(scans / f"case{i}.nii.gz", vol, aff)
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    return scans, model, ["predict", "alzheimer", str(scans), "-o", str(tmp_path / "out"), "--model", str(model),
                          "--device", "cpu"]


def quiet_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: one thread, no progress bars."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", **extra)


def run_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(medcnn_cmd(*args), capture_output=True, text=True, timeout=timeout, env=quiet_env(**env),
                          cwd=REPO)


def ad_training_set(folder: Path, n: int = 4) -> Path:
    """``n`` small T1-like volumes (half "AD": larger dark ventricles) and a manifest CSV; returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case,subject,image,diagnosis"]
    for i in range(n):
        vol, aff = head_volume(seed=100 + i)
        label = "AD" if i % 2 else "CN"
        c = np.array(vol.shape) // 2
        r = 4 if label == "AD" else 2
        vol[c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = 10.0
        write_nifti(folder / f"s{i:02d}.nii.gz", vol, aff)
        lines.append(f"s{i:02d},subj{i:02d},s{i:02d}.nii.gz,{label}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


#: overrides of configs/alzheimer.yaml for seconds-long CPU training on :func:`ad_training_set`
AD_TRAIN_TINY = [
    "data.format=manifest", "data.label=diagnosis", "data.val_fraction=0.5", "model.kwargs.channels=[4,8]",
    "model.kwargs.dropout=0.0", "preprocess.spacing=[6,6,6]", "preprocess.size=[16,16,16]", "train.batch_size=2",
    "train.amp=off", "train.device=cpu", "train.early_stopping=null", "train.class_weights=null", "train.warmup_epochs=0",
]


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A grey PNG whose header claims ``width x height`` pixels over a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path
