"""Process-wide runtime shared by training and serving: joining or starting Ray, torch's thread count.

Ray is imported only inside the call, so importing the core never pulls Ray in (nor needs it installed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def ensure_ray(**init_kwargs: Any) -> None:
    """Join the cluster in RAY_ADDRESS if set, else start (or reuse) a local Ray instance.

    Does nothing when this process is connected already. `init_kwargs` go to `ray.init` for a start
    (e.g. `namespace`, `num_cpus`); the defaults keep Ray's logs out of the caller's terminal."""
    import ray

    if ray.is_initialized():
        return
    options = {"address": os.environ.get("RAY_ADDRESS") or None, "log_to_driver": False,
               "configure_logging": False, **init_kwargs}
    ray.init(**options)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` (None or 0: left as it is) for the block, then put back:
    a library call or an in-process CLI command must not change the caller's setting for good."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
