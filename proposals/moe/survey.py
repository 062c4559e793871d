"""Every causal-LM model type in the installed transformers that has an MoE block, as a
tiny seeded block built offline from its config: the coverage survey of ``from_transformers``.

The model types and block classes are discovered from transformers itself (a module
class of the causal-LM class's modeling module that assigns ``self.experts``) and
committed in ``survey.json`` with every model type whose class did not import and why
(``python -m proposals.moe.survey`` rewrites it; a test compares it with a fresh survey).
The tiny config shrinks
whichever of the usual size fields the config class has. Nothing here names a family's
semantics: :func:`proposals.moe.hf.block_arrays` reads those from the block.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from generator.errors import UsageError
from generator.torch_reference import float64_copy, float64_mode, load_seeded

HIDDEN = 16
# size fields -> tiny values, applied when the config class has the field
_SHRINK = {
    "hidden_size": HIDDEN,
    "intermediate_size": 24,
    "moe_intermediate_size": 12,
    "expert_ffn_hidden_size": 12,
    "ffn_hidden_size": 12,
    "shared_expert_intermediate_size": 20,
    "moe_shared_expert_intermediate_size": 20,
    "shared_intermediate_size": 20,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "num_hidden_layers": 2,
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "moe_num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_k": 2,
    "n_group": 2,
    "num_expert_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "moe_num_shared_experts": 1,
    "q_lora_rank": 8,
    "kv_lora_rank": 8,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "router_hidden_size": 8,
}
# config fields a model type needs beyond the shrink (validators, nested configs)
_EXTRA = {
    "granitemoehybrid": {"mamba_n_heads": 4, "mamba_d_head": 8},
    "zaya": {"num_experts_per_tok": 1},
}


# Causal-LM model types whose MoE is not a standalone block module: why each is not the op.
NO_STANDALONE_BLOCK = {
    "doge": "DogeCDMoE is a product-key memory: each 'expert' is one row of an embedding table retrieved "
    "through sqrt(E) x sqrt(E) product keys, not an FFN",
    "gemma4": "the decoder layer computes its MoE inline: the router reads the residual stream while the experts "
    "read a separately normalized copy (pre_feedforward_layernorm_2), and the result is normalized again; "
    "the op routes and runs experts on the same X",
}
# What from_transformers says about the discovered blocks it does not convert (checked in tests).
EXPECTED_REFUSALS = {
    "axk1": "a norm is applied to the block output",
    "dbrx": "L_p norm",
    "deepseek_v4": "hash routing",
    "jetmoe": "mixture of attention heads",
    "kolibri1": "selection bias is added to the router logits",
    "longcat_flash": "identity ('zero-compute') experts",
    "nemotron_h": "'relu2'",
    "phimoe": "sparsemixer",
    "zaya": "the router is an MLP",
    # surveyed once the survey followed each causal-LM class to its module (they were skipped):
    "inkling_text": "no single [E=8, H=16] router matrix",  # its gate has a row more than the experts (9 for 8)
    "inkling2_text": "matches no activation of the op",  # Inkling2SoftcappedSwiGLU
    "inkling2_loop_text": "matches no activation of the op",  # the same experts as inkling2
    "minimax_m3_vl_text": "matches no activation of the op",  # its config sets swiglu_alpha and swiglu_limit
}


SURVEY_JSON = Path(__file__).resolve().parent / "survey.json"


@dataclass(frozen=True)
class Survey:
    transformers: str  # the version surveyed
    blocks: dict[str, dict[str, object]]  # model type -> {"module": modeling module, "classes": MoE blocks}
    not_imported: dict[str, str]  # model type -> why its causal-LM class did not import

    def as_json(self) -> dict:
        return {"transformers": self.transformers, "blocks": self.blocks, "not_imported": self.not_imported}


@cache
def survey() -> Survey:
    """Every causal-LM model type's modeling module (the one holding its causal-LM class),
    scanned for MoE blocks; the model types whose class did not import, each with the error."""
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    blocks: dict[str, dict[str, object]] = {}
    not_imported = {}
    for model_type, class_name in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()):
        try:
            mod = importlib.import_module(getattr(transformers, class_name).__module__)
        except Exception as err:  # noqa: BLE001 (reported, with the error, not skipped)
            not_imported[model_type] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        found = []
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == mod.__name__:
                try:
                    src = inspect.getsource(obj.__init__)
                except (OSError, TypeError):
                    continue
                if re.search(r"self\.experts\s*=", src) and "DecoderLayer" not in name and "Vision" not in name:
                    found.append(name)
        if found:
            blocks[model_type] = {"module": mod.__name__, "classes": found}
    return Survey(transformers.__version__, blocks, not_imported)


def committed() -> Survey:
    """The survey as committed in ``survey.json`` (``python -m proposals.moe.survey`` rewrites it)."""
    data = json.loads(SURVEY_JSON.read_text())
    return Survey(data["transformers"], data["blocks"], data["not_imported"])


def moe_model_types() -> dict[str, tuple[str, ...]]:
    """Causal-LM model type -> the MoE block classes of its modeling module (the committed
    survey: a test checks it against a fresh one)."""
    return {t: tuple(entry["classes"]) for t, entry in committed().blocks.items()}


def tiny_config(model_type: str):
    """The model type's text config with tiny sizes."""
    from transformers import AutoConfig

    config_cls = type(AutoConfig.for_model(model_type))
    defaults = config_cls()
    fields = {k: v for k, v in _SHRINK.items() if _has(defaults, k)} | _EXTRA.get(model_type, {})
    text = defaults.get_text_config()
    if text is not defaults:  # a composite config: shrink its text config
        text = type(text)(**{k: v for k, v in _SHRINK.items() if _has(text, k)} | _EXTRA.get(model_type, {}))
    else:
        text = config_cls(**fields)
    text._experts_implementation = "eager"  # the per-expert loop; a standalone block has none
    return text


def _has(config, field: str) -> bool:
    """Whether the config has the size field (an int, or None when it defaults elsewhere)."""
    if field not in vars(config) and field not in getattr(config, "attribute_map", {}):
        return False
    try:
        value = getattr(config, field, None)
    except Exception:  # noqa: BLE001 (composite configs refuse some fields)
        return False
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def tiny_block(model_type: str, seed: int = 0):
    """The model type's (first) MoE block, float32, weights seeded with the project RNG."""
    blocks = moe_model_types().get(model_type)
    if not blocks:
        raise UsageError(f"{model_type!r} has no MoE block; valid: {sorted(moe_model_types())}")
    cls = getattr(importlib.import_module(committed().blocks[model_type]["module"]), blocks[0])
    config = tiny_config(model_type)
    errors = []
    for args in ((config,), (config, 1)):  # some blocks also take their layer index
        try:
            block = cls(*args)
            break
        except Exception as err:  # noqa: BLE001 (the next signature may fit)
            errors.append(f"{type(err).__name__}: {err}")
    else:
        raise UsageError(f"cannot build {blocks[0]} from a tiny {model_type} config: {errors[-1]}")
    return load_seeded(block.float(), seed, std=0.5).eval()


def block_output64(block, hidden_states):
    """The block's hidden-states output from a float64 copy of it (the expected output)."""
    import torch

    block64 = float64_copy(block)
    with float64_mode():  # transformers asks for float32 in places; that would follow the CPU
        out = block64(torch.from_numpy(hidden_states).double())
    out = out[0] if isinstance(out, tuple) else out
    return out.numpy().reshape(hidden_states.shape)


def main() -> None:
    found = survey()
    SURVEY_JSON.write_text(json.dumps(found.as_json(), indent=2, sort_keys=True) + "\n")
    print(f"{len(found.blocks)} model types with an MoE block, {len(found.not_imported)} not imported -> {SURVEY_JSON}")
    for model_type, why in found.not_imported.items():
        print(f"  not imported: {model_type}: {why}")


if __name__ == "__main__":
    main()
