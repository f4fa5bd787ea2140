"""Pinned memory: copy batches into page-locked memory for fast host-to-device transfer.

`pin_memory_device` decides once per loader iterator whether and for which accelerator to pin
(and warns exactly as DataLoader does when it cannot); `pin` copies one batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


def pin_memory_device(pin_memory: bool, pin_memory_device: str) -> str | None:
    """The device to pin batches for, or None; warns as DataLoader's iterator does."""
    if not pin_memory:
        return None
    if pin_memory_device:
        warnings.warn(
            "pin_memory_device is deprecated, the current accelerator will be used as the"
            f" device, ignore pin_memory_device='{pin_memory_device}'.",
            stacklevel=3,
        )
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        warnings.warn(
            "'pin_memory' argument is set as true but no accelerator is found, then device"
            " pinned memory won't be used.",
            stacklevel=3,
        )
        return None
    device = accelerator.current_accelerator()
    if device is None:
        return None
    if device.type == "mps":  # pinning fails on MPS (pytorch#86060); DataLoader skips it too
        warnings.warn(
            "'pin_memory' argument is set as true but not supported on MPS now, device pinned"
            " memory won't be used.",
            stacklevel=3,
        )
        return None
    return str(device.type)


def pin(batch: Any, device: str) -> Any:
    """``batch`` with every tensor copied into pinned memory for ``device``."""
    from torch.utils.data._utils.pin_memory import pin_memory

    return pin_memory(batch, device)
