"""How many threads torch's CPU ops use inside a run that computes in the driver process."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads, then restore the count.

    The in-process kinds' ops are small (a digits MLP, a 40-wide analog row): extra threads only
    spin on them, and stall badly once the cores are busy. Measured on a busy 2-core machine, the
    shipped stn job took 30.5 s on two threads and 9.5 s on one, bl_just 50.5 s and 12.0 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
