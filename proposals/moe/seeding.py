"""Seeded weights for torch modules, drawn with the project RNG (never torch's initialisers)."""

from __future__ import annotations

from generator.onnx_build import seeded


def seed_module(module, seed: int, scale: float = 0.5):
    """Fill every floating-point parameter and buffer of ``module`` with
    ``seeded(seed).randn * scale``, drawn in float64 in sorted-name order and cast once to
    the tensor's dtype. Returns the module (in eval mode)."""
    import torch

    rng = seeded(seed)
    tensors = sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])
    with torch.no_grad():
        for _, tensor in tensors:
            if tensor.is_floating_point():
                values = rng.randn(*tensor.shape) * scale
                tensor.copy_(torch.from_numpy(values).to(tensor.dtype))
    return module.eval()
