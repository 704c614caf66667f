"""Device selection: CPU unless asked otherwise (never CUDA by default)."""

from __future__ import annotations

from pathlib import Path

import torch

from medcnn.errors import ConfigError


def resolve_device(pref: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """Turn a user's device choice into a ``torch.device``.

    Args:
        pref: ``None``/``"cpu"`` -> CPU; ``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available,
            else CPU; ``"cuda"`` -> ``cuda:<local_rank>``; ``"cuda:N"`` as given.
        local_rank: this process's local rank under torchrun.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown device string.
    """
    if pref is None:
        return torch.device("cpu")
    if isinstance(pref, torch.device):
        return pref
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
