"""torch modules as portable references: seeded weights and float64 forwards.

Committed bytes must not depend on the CPU's SIMD kernels, BLAS build or thread count.
torch's initialisers and ``torch.randn`` move with the kernel choice
(``ATEN_CPU_CAPABILITY``), and float32 matmuls, softmaxes and transcendentals round
differently per kernel. So weights are drawn with the project's RNG in float64 and cast
once, and a reference forward runs a float64 copy of the module in :func:`float64_mode`,
which also lifts transformers' explicit float32 upcasts (softmax ``dtype=torch.float32``,
RMSNorm's ``.to(torch.float32)``, RoPE's ``.float()``) to float64. Its outputs are cast
once to the output dtype; a float64 rounding difference survives that cast only when a
value sits within ~1e-16 of a float32 rounding boundary.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import numpy as np

from generator.onnx_build import seeded


def load_seeded(
    module,
    seed: int,
    std: float,
    *,
    buffers: bool = True,
    centre: Callable[[str], float] = lambda name: 0.0,
):
    """Overwrite every floating parameter (and buffer) of ``module`` with seeded draws.

    Names are visited in sorted order; each tensor gets ``centre(name) + std * N(0, 1)``
    drawn in float64 from ``seeded(seed)`` and cast once to the tensor's own dtype.
    """
    import torch

    named = dict(module.named_parameters())
    if buffers:
        named.update(module.named_buffers())
    rng = seeded(seed)
    with torch.no_grad():
        for name in sorted(named):
            tensor = named[name]
            if tensor.is_floating_point():
                draw = centre(name) + std * rng.randn(*tensor.shape)
                tensor.copy_(torch.from_numpy(np.asarray(draw, np.float64)).to(tensor.dtype))
    return module


def norm_centre(name: str) -> float:
    """A ``centre`` for transformers models: norm weights scatter around 1 (a zero-centred
    norm weight would mute its layer), everything else around 0."""
    return 1.0 if name.endswith("norm.weight") else 0.0


def float64_copy(module):
    """A float64 copy of ``module`` in eval mode (the original is left as it is)."""
    return copy.deepcopy(module).double().eval()


@contextlib.contextmanager
def float64_mode() -> Iterator[None]:
    """Within the block, torch computes in float64: float32 requested anywhere (a ``dtype``
    argument, ``.float()``, ``.to(torch.float32)``) becomes float64, new tensors default
    to float64, and any other floating result raises (the reference would not be float64)."""
    import torch
    from torch.overrides import TorchFunctionMode

    def lift(value):
        return torch.float64 if value is torch.float32 else value

    class _Float64(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.float:
                func = torch.Tensor.double
            args = tuple(lift(a) for a in args)
            kwargs = {k: lift(v) for k, v in (kwargs or {}).items()}
            result = func(*args, **kwargs)
            for out in result if isinstance(result, tuple | list) else (result,):
                if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float64:
                    raise RuntimeError(f"{getattr(func, '__name__', func)} gave {out.dtype} in float64_mode")
            return result

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with _Float64(), torch.no_grad():
            yield
    finally:
        torch.set_default_dtype(previous)


def seeded_model(
    build: Callable[[], object], seed: int, std: float, *, centre: Callable[[str], float] = lambda name: 0.0
):
    """A float32 module in eval mode whose every floating parameter is a seeded draw.

    ``build()`` runs in :func:`float64_mode`, so buffers the module computes itself (RoPE
    frequencies) come out in float64; parameters are drawn by :func:`load_seeded`; then
    the whole module is cast once to float32.
    """
    with float64_mode():
        module = build()
    load_seeded(module, seed, std, buffers=False, centre=centre)
    return module.float().eval()
