"""Device helpers shared by the engine, the model adapters and the benchmark scripts.

Kept free of any other ``altp`` import so every layer can use it.
"""

from __future__ import annotations

import torch

__all__ = ["synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (CUDA only), so a wall-clock reading covers them.

    A no-op on the CPU, whose ops run synchronously.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
