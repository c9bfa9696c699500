"""Deterministic weights shared by the golden-tensor dev scripts and the parity tests.

Golden files in ``tests/assets`` must stay small, so they store only the parameter names and
shapes of the reference model plus an input/output pair. The weights themselves are regenerated
from the key names by :func:`seeded_state_dict`, which the dev script (running the reference
library) and the test (running iceseg) both call.
"""

import math
import zlib

import torch


def seeded_tensor(key: str, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return a reproducible tensor for a state-dict entry.

    The generator is seeded with ``crc32(key)``, so values depend only on the key name and shape.
    Conv/linear weights get ``N(0, 1/fan_in)`` (keeps activations O(1) through deep nets),
    norm weights ``1 + U(-0.1, 0.1)``, biases and running means ``U(-0.1, 0.1)``, running
    variances ``U(0.5, 1.5)``, relative-position tables ``N(0, 0.02)``; integer buffers are zero.

    Args:
        key: state-dict key, e.g. ``"encoder.layer1.0.conv1.weight"``.
        shape: tensor shape.
        dtype: floating dtype of the result; integer keys (``num_batches_tracked``) get int64.

    Returns:
        Tensor of ``shape``.
    """
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked" or name.endswith("index"):
        return torch.zeros(shape, dtype=torch.int64)
    if name == "running_var":
        return torch.rand(shape, generator=g, dtype=dtype) + 0.5
    if "relative_position_bias_table" in key or "absolute_pos_embed" in key:
        return torch.randn(shape, generator=g, dtype=dtype) * 0.02
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(fan_in)
    if name == "weight":  # 1-D weight: a norm layer's scale
        return 1.0 + (torch.rand(shape, generator=g, dtype=dtype) - 0.5) * 0.2
    return (torch.rand(shape, generator=g, dtype=dtype) - 0.5) * 0.2


def seeded_state_dict(shapes: dict) -> dict:
    """Build a full state dict from ``{key: shape}`` with :func:`seeded_tensor` values."""
    return {k: seeded_tensor(k, tuple(s)) for k, s in shapes.items()}
