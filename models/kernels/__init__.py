"""Triton kernels for batched inference, each beside its PyTorch reference, and the switch that picks them.

    lstm.py      persistent fused LSTM recurrence (+ `lstm_forward` for a whole nn.LSTM)
    epilogue.py  quantile head + non-crossing quantiles + interval scaling + de-normalization, one pass

Which path runs is decided per call by `kernels_enabled` (QuantileForecaster.forward asks it, so
`Bundle.predict`, the Serve replica and batch scoring all follow it without code of their own):

    ENERGYOPT_KERNELS (environment, wins) or the model config's `kernels` field:
      auto (default)  kernels for CUDA tensors, the PyTorch reference elsewhere
      on              kernels wherever Triton can run them: CUDA, or CPU tensors under Triton's
                      interpreter (TRITON_INTERPRET=1 set before this package's kernels are imported)
      off             always the PyTorch reference

Kernels are inference-only: a forward pass that records gradients always takes the reference. Triton is
imported only when a kernel is first used, so the CPU path never pays for it (nor needs it installed).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

MODES = ("auto", "on", "off")
ENV_VAR = "ENERGYOPT_KERNELS"
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def kernel_mode(configured: str = "auto") -> str:
    """The mode in force: ENERGYOPT_KERNELS if set, else the configured one."""
    mode = (os.environ.get(ENV_VAR) or configured).strip().lower()
    if mode not in MODES:
        source = f"environment variable {ENV_VAR}" if os.environ.get(ENV_VAR) else "model config field 'kernels'"
        raise ValueError(f"{source} must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def kernels_enabled(device: torch.device | str, configured: str = "auto") -> bool:
    """Whether inference on `device` should use the Triton kernels."""
    mode = kernel_mode(configured)
    if mode == "off":
        return False
    device = torch.device(device)
    if device.type == "cuda":
        if not HAVE_TRITON and mode == "on":
            raise RuntimeError(f"{ENV_VAR}=on but triton is not installed: pip install triton")
        return HAVE_TRITON
    if mode == "on":
        if not (HAVE_TRITON and interpreted()):
            raise RuntimeError(
                f"{ENV_VAR}=on with {device.type} tensors needs triton and its interpreter: install triton and "
                f"set TRITON_INTERPRET=1 before the first kernel is imported (or use {ENV_VAR}=auto)")
        return True
    return False


def lstm_forward(*args: Any, **kwargs: Any) -> Any:
    """models.kernels.lstm.lstm_forward (imported on first use)."""
    from models.kernels.lstm import lstm_forward as impl

    return impl(*args, **kwargs)


def lstm_unsupported_reason(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> str | None:
    """Why the LSTM kernel cannot run `module` in `dtype` (None: it can)."""
    from models.kernels.lstm import unsupported_reason

    return unsupported_reason(module, dtype)


def quantile_epilogue(*args: Any, **kwargs: Any) -> torch.Tensor:
    """models.kernels.epilogue.quantile_epilogue (imported on first use)."""
    from models.kernels.epilogue import quantile_epilogue as impl

    return impl(*args, **kwargs)
