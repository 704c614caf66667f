"""Side-by-side training throughput: ``medcnn train``'s engine vs a MONAI-tutorial training loop.

Same data (generated brain-tumour cases, 4 MRI contrasts, BraTS labels as nested regions
WT/TC/ET), same network (MONAI UNet 16..256, 2 residual units), same patch and batch size.

* MONAI tutorial loop (the BraTS / spleen tutorials' recipe): ``CacheDataset`` over
  ``LoadImaged, EnsureChannelFirstd, Orientationd(RAS), Spacingd(2.5 mm), NormalizeIntensityd
  (nonzero, channel-wise)`` + per-step ``RandCropByPosNegLabeld, RandFlipd x 3,
  RandScaleIntensityd, RandShiftIntensityd``; ``DataLoader(shuffle=True)``; ``DiceCELoss(sigmoid)``,
  ``Adam``, fp32, MetaTensors straight into the network as the tutorials do.
* medcnn: :class:`medcnn.engine.trainer.Trainer` built from ``configs/brain_tumor.yaml`` (its
  augmentation, loss and optimiser, with ``--set`` overrides), stepping through
  ``Trainer._batches`` + ``Trainer.train_step`` -- the code ``medcnn train`` runs per step.

``--also KEY=VAL[,KEY=VAL...]`` (repeatable) adds a further medcnn loop with those config
overrides to the same interleaved run, e.g. ``train.channels_last=true`` or ``train.compile=true``
(issue #7's GPU figures: ``--device cuda --also train.amp=bf16,train.channels_last=true``). The
MONAI loop stays fp32, as in the tutorials; ``--device`` puts both on a GPU (the MONAI loop moves
each batch there, as its tutorials do).

Both are timed per step after ``--warmup`` steps (DataLoader workers started, caches built),
in ``--rounds`` alternating rounds of ``--steps`` steps so that machine noise hits both alike.
Printed: steps/s (best round and median) and the ratio medcnn / MONAI (> 1: medcnn faster).

Examples::

    medcnn generate brain-tumor -n 6 --seed 5 -o /tmp/bt_train
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --cases /tmp/bt_train --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --cases /tmp/bt_train --threads 1 --patch 64 --batch 2 \\
        --set train.augment.names=[spatial,intensity]
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --cases /tmp/bt_train --threads 1 \\
        --also train.channels_last=true --also train.compile=true --warmup 3
    python benchmarks/bench_train.py --cases /tmp/bt_train --device cuda --patch 128 --batch 2 --steps 10 \\
        --also train.amp=bf16 --also train.amp=bf16,train.channels_last=true \\
        --also train.amp=bf16,train.channels_last=true,train.compile=true --warmup 5
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "brain_tumor.yaml"


def _records(case_dir: str) -> list[dict]:
    recs = []
    for folder in sorted(glob.glob(os.path.join(case_dir, "*", ""))):
        files = [glob.glob(os.path.join(folder, f"*-{c}.nii.gz")) for c in CONTRASTS]
        seg = glob.glob(os.path.join(folder, "*-seg.nii.gz"))
        if all(files) and seg:
            recs.append({"image": [f[0] for f in files], "label": seg[0]})
    if len(recs) < 2:
        raise SystemExit(f"need >= 2 brain-tumour cases under {case_dir}: medcnn generate brain-tumor -n 6 --seed 5 -o {case_dir}")
    return recs


def _unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(3, 4, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _brats_regions(label: torch.Tensor) -> torch.Tensor:
    """``(1, *spatial)`` BraTS 2023 labels -> ``(3, *spatial)`` float WT (1|2|3), TC (1|3), ET (3)
    (MONAI's ConvertToMultiChannelBasedOnBratsClassesd expects the 2021 label 4 for ET)."""
    return torch.cat([label > 0, (label == 1) | (label == 3), label == 3]).float()


class MonaiLoop:
    """The MONAI-tutorial loop, stepping on demand."""

    def __init__(self, recs: list[dict], patch: int, batch: int, workers: int, seed: int,
                 device: torch.device = torch.device("cpu")) -> None:
        from monai.data import CacheDataset, DataLoader
        from monai.losses import DiceCELoss
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            Lambdad,
            LoadImaged,
            NormalizeIntensityd,
            Orientationd,
            RandCropByPosNegLabeld,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
            Spacingd,
            SpatialPadd,
        )
        from monai.utils import set_determinism

        set_determinism(seed)
        keys = ["image", "label"]
        det = [
            LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=(2.5, 2.5, 2.5), mode=("bilinear", "nearest")),
            Lambdad("label", _brats_regions),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            SpatialPadd(keys, spatial_size=(patch,) * 3),
        ]
        rand = [
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1, num_samples=1),
            RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=1.0), RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        ]
        ds = CacheDataset(recs, Compose(det + rand), cache_rate=1.0, num_workers=1, progress=False)
        self.loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                 persistent_workers=workers > 0)
        self.device = device
        self.net = _unet().to(device)
        self.loss = DiceCELoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
        self.opt = torch.optim.Adam(self.net.parameters(), 1e-4, weight_decay=1e-5)
        self.net.train()
        self._it = iter(self.loader)

    def _next(self) -> dict:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> float:
        batch = self._next()
        x, y = batch["image"].to(self.device), batch["label"].to(self.device)
        self.opt.zero_grad()
        out = self.net(x)
        loss = self.loss(out, y)
        loss.backward()
        self.opt.step()
        return loss.item()


class OursLoop:
    """medcnn's Trainer, stepping through the same code ``medcnn train`` runs per step."""

    def __init__(self, case_dir: str, patch: int, batch: int, sets: list[str], run_dir: str, device: str = "cpu") -> None:
        from medcnn.engine.schema import load_train_config
        from medcnn.engine.trainer import Trainer

        overrides = [f"data.source={case_dir}", f"train.patch_size=[{patch},{patch},{patch}]", f"train.batch_size={batch}",
                     "train.samples_per_case=1", f"train.device={device}", "data.val_fraction=0.2", *sets]
        cfg = load_train_config(CONFIG, overrides)
        self.trainer = Trainer(cfg, run_dir)
        self.trainer.setup()
        self.trainer.net.train()
        self._epoch = 0
        self._it = self._new_iter()

    def _new_iter(self):
        tr = self.trainer
        tr.transforms.set_random_state(seed=self._epoch)
        loader = tr._loader(self._epoch)
        self._epoch += 1
        return tr._batches(loader)

    def step(self) -> float:
        try:
            x, y = next(self._it)
        except StopIteration:
            self._it = self._new_iter()
            x, y = next(self._it)
        return self.trainer.train_step(x, y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="/tmp/bt_train", help="folder of generated brain-tumour cases")
    parser.add_argument("--patch", type=int, default=80)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loop first")
    parser.add_argument("--monai-workers", type=int, default=1, help="DataLoader workers of the MONAI loop")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for medcnn (key=value)")
    parser.add_argument("--also", action="append", default=[],
                        help="another medcnn loop with these extra overrides (KEY=VAL[,KEY=VAL...]); repeatable")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recs = _records(args.cases)
    print(f"machine: {platform.machine()} | {os.cpu_count()} CPUs | torch {torch.__version__} threads {torch.get_num_threads()}"
          f" | device {args.device}" + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else ""))
    print(f"{len(recs)} cases from {args.cases} | patch {args.patch}^3 batch {args.batch} | "
          f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps")

    t0 = time.perf_counter()
    device = torch.device(args.device)
    monai_loop = MonaiLoop(recs, args.patch, args.batch, args.monai_workers, args.seed, device)
    print(f"  MONAI CacheDataset built in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as run_dir:
        loops: list[tuple[str, MonaiLoop | OursLoop]] = [("MONAI tutorial loop (fp32)", monai_loop)]
        for i, extra in enumerate(["", *args.also]):
            t0 = time.perf_counter()
            sets = [*args.sets, *[e for e in extra.split(",") if e]]
            loops.append((f"medcnn train_step {extra}".strip(),
                          OursLoop(args.cases, args.patch, args.batch, sets, os.path.join(run_dir, str(i)), args.device)))
            print(f"  medcnn loop {i} set up in {time.perf_counter() - t0:.1f} s")
        for name, loop in loops:
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                loop.step()
            _sync(device)
            print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        rates: list[list[float]] = [[] for _ in loops]
        for _ in range(args.rounds):
            for i, (_, loop) in enumerate(loops):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    loop.step()
                _sync(device)
                rates[i].append(args.steps / (time.perf_counter() - t0))
        width = max(32, *(len(n) for n, _ in loops))
        print(f"\n{'loop':{width}s} {'best steps/s':>13s} {'median':>8s} {'patches/s':>10s} {'ratio':>7s}")
        for (name, _), r in zip(loops, rates):
            print(f"{name:{width}s} {max(r):13.3f} {statistics.median(r):8.3f} {max(r) * args.batch:10.2f} "
                  f"{max(r) / max(rates[0]):6.2f}x")
        print("\nratio = best steps/s over MONAI's best (> 1: faster than the MONAI loop); rounds interleaved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
