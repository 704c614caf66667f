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


def cpu_has_native_bf16() -> bool:
    """True if this CPU has bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
