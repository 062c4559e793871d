"""from_transformers: every supported family matches its transformers block; the rest
raise one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe import from_transformers
from proposals.moe.families import SUPPORTED, block_output, tiny_block


@pytest.mark.parametrize("family", SUPPORTED)
def test_family_matches_transformers(family: str) -> None:
    block = tiny_block(family, seed=3)
    model = from_transformers(block)
    runner = session(model, threads=1)
    for shape in ((3, 5, 16), (1, 1, 16)):
        x = seeded(4).randn(*shape).astype(np.float32)
        got = runner.run(None, {"hidden_states": x})[0]
        np.testing.assert_allclose(got, block_output(block, x), rtol=1e-4, atol=2e-5)


def test_phimoe_sparsemixer_is_refused() -> None:
    with pytest.raises(UsageError, match="PhimoeSparseMoeBlock is not supported by MoE: sparsemixer"):
        from_transformers(tiny_block("phimoe"))


def test_unknown_block_is_refused() -> None:
    import torch

    with pytest.raises(UsageError, match="Linear is not a transformers v5 MoE block: no child holds stacked 3-D"):
        from_transformers(torch.nn.Linear(2, 2))


def test_unsupported_activation_is_refused() -> None:
    from transformers.models.mixtral.configuration_mixtral import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=8, intermediate_size=4, num_local_experts=2, hidden_act="tanh")
    with pytest.raises(UsageError, match="expert activation 'tanh' is not supported by MoE; valid"):
        from_transformers(MixtralSparseMoeBlock(config))
