"""Full float32 precision for a measurement, whatever autocast or matmul precision the loop set."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

__all__ = ["full_precision"]


@contextlib.contextmanager
def full_precision(device_types: Iterable[str]) -> Iterator[None]:
    """Run the block in full float32 precision whatever the user's loop set.

    Inside the user's ``torch.autocast`` it is switched off for the block (only where it is on:
    entering an autocast context costs more than the check); reduced-precision float32 matmuls
    (TF32 on CUDA, bfloat16 passes on CPU, as ``torch.set_float32_matmul_precision("high")`` or
    ``"medium"`` allow) are switched off for the block and restored after it.
    """
    with contextlib.ExitStack() as stack:
        for device_type in device_types:
            if _autocast_on(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        precision = torch.get_float32_matmul_precision()
        if precision != "highest":
            torch.set_float32_matmul_precision("highest")
            stack.callback(torch.set_float32_matmul_precision, precision)
        yield


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (RuntimeError, ValueError, TypeError):  # a device type without autocast
        return False
