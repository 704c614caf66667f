"""Device selection: CPU unless asked otherwise (never CUDA by default)."""

from __future__ import annotations

from pathlib import Path

import torch

from medcnn.errors import ConfigError


#: device names accepted besides torch's own: ``gpu``/``gpu:N`` (TotalSegmentator's and nnU-Net's spelling)
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, gpu, gpu:N or mps"


def normalize_device_name(pref: str) -> str:
    """``"gpu"`` -> ``"cuda"``, ``"gpu:N"`` -> ``"cuda:N"``, ``"GPU"`` -> ``"cuda"``; other names lower-cased.

    Raises:
        ConfigError: not one of :data:`DEVICE_CHOICES`.
    """
    name = str(pref).strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    base, _, index = name.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())) \
            or (name.endswith(":") and not index):
        raise ConfigError(f"unknown device {pref!r}; use {DEVICE_CHOICES}")
    return name


def resolve_device(pref: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """Turn a user's device choice into a ``torch.device``.

    Args:
        pref: ``None``/``"cpu"`` -> CPU; ``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available,
            else CPU; ``"cuda"``/``"gpu"`` -> ``cuda:<local_rank>``; ``"cuda:N"``/``"gpu:N"`` as given;
            ``"mps"`` -> Apple's Metal device.
        local_rank: this process's local rank under torchrun.

    Raises:
        ConfigError: the device is not available, or an unknown device string.
    """
    if pref is None:
        return torch.device("cpu")
    if isinstance(pref, torch.device):
        return pref
    pref = normalize_device_name(pref)
    if pref == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' requested but Apple's MPS backend is not available on this machine")
        return torch.device("mps")
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:
        raise ConfigError(f"unknown device {pref!r}; use cpu, auto, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {pref!r} requested but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


#: CPU flags meaning bf16 arithmetic runs natively (otherwise it is emulated and slower than fp32)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` flag).

    Without native support, bf16 convolutions on CPU are emulated and several times slower than
    fp32, so ``precision="auto"`` and ``train.amp: auto`` stay in fp32 there.

    Args:
        cpuinfo: the ``/proc/cpuinfo``-style file to read (Linux). Elsewhere, or when it cannot be
            read, the answer is ``False``.
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)
    except OSError:
        return False
    return False
