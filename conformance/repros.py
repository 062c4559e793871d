"""Upstream-ready repro folders, one per divergence: ``repros/<slug>/``.

Each folder holds the minimal ``model.onnx``, ``input_<name>.npy``, ``expected_<name>.npy``
(float64 spec reference, cast once), ``actual_<name>.npy`` (what the runtime does,
written from a numpy model of its behaviour that ``test_repros`` checks against the
runtime itself), a ``repro.py`` of at most 20 lines and ``ISSUE.md``. Written by
``python -m conformance.repros``; every byte depends only on this code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript

from conformance import reference
from conformance.examples import single_node_model
from generator.onnx_build import builder_model, function_proto, graph_builder, seeded

INT64, FLOAT, BOOL = ir.DataType.INT64, ir.DataType.FLOAT, ir.DataType.BOOL

REPROS = Path(__file__).resolve().parent.parent / "repros"

# How each repro script gets its outputs: the modules it imports (a missing one means the
# script could not run), then the lines that set `got`, a dict of outputs (or raise).
RUNNERS = {
    "reference": (
        "onnx.reference",
        "ev = onnx.reference.ReferenceEvaluator(str(HERE / 'model.onnx'))\n"
        "got = dict(zip(ev.output_names, ev.run(None, feeds)))",
    ),
    "inliner": (
        "onnx.inliner, onnx.reference",
        "ev = onnx.reference.ReferenceEvaluator(onnx.inliner.inline_local_functions(onnx.load(HERE / 'model.onnx')))\n"
        "got = dict(zip(ev.output_names, ev.run(None, feeds)))",
    ),
    "onnxruntime": (
        "onnxruntime as ort",
        "sess = ort.InferenceSession(str(HERE / 'model.onnx'), providers=['CPUExecutionProvider'])\n"
        "got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))",
    ),
    "tract": (
        "onnx, tract",
        "graph = onnx.load(HERE / 'model.onnx').graph\n"
        "model = tract.onnx().load(str(HERE / 'model.onnx')).into_model().into_runnable()\n"
        "got = {o.name: r.to_numpy() for o, r in zip(graph.output, model.run([feeds[i.name] for i in graph.input]))}",
    ),
    "openvino": (
        "openvino as ov",
        "compiled = ov.Core().compile_model(str(HERE / 'model.onnx'), 'CPU', {CONFIG})\n"
        "got = {o.get_any_name(): r for o, r in compiled(feeds).items()}",
    ),
}

# Exit statuses: 1 reproduced, 0 fixed, 2 could not run (a package or file is missing, or the
# runtime failed in another way than the repro records); each ends with one line.
SCRIPT = '''"""{title}. Exit 1: reproduced; 0: fixed; 2: could not run (missing package or file, other error)."""
import pathlib, sys
HERE, ERROR = pathlib.Path(__file__).parent, {error!r}  # ERROR: the runtime's recorded error, if any
def end(status, *words): print(" ".join(" ".join(map(str, words)).split())[:400]); sys.exit(status)
try:
    import numpy as np, {imports}
    feeds, expected = ({{n: np.load(HERE / f"{{kind}}_{{n}}.npy") for n in names}} for kind, names in {files!r})
except (ImportError, OSError) as err:
    end(2, "COULD NOT RUN:", f"{{type(err).__name__}}:", err)
try:
{runner}
    bad = [n for n in expected if not np.allclose(got[n], expected[n], rtol={rtol}, atol={atol})]
except Exception as err:
    text = " ".join(f"{{type(err).__name__}}: {{err}}".split())
    end(1, "REPRODUCED:", text) if ERROR and ERROR in text else end(2, "COULD NOT RUN (another error):", text)
if bad:
    end(1, "REPRODUCED:", bad[0], "expected", expected[bad[0]].ravel()[:8], "got", np.asarray(got[bad[0]]).ravel()[:8])
end(0, "FIXED: every output matches the spec reference")
'''


@dataclass(frozen=True)
class Repro:
    slug: str
    project: str  # the tracker it is for: onnx/onnx, microsoft/onnxruntime, openvinotoolkit/openvino
    title: str
    runner: str  # a RUNNERS key
    build: Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]]
    actual: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray] | str]  # behaviour model or error text
    spec: str  # the sentence of the spec (or docs) it contradicts
    packages: tuple[str, ...]
    notes: str = ""
    config: str = "{}"  # openvino compile config
    rtol: float = 1e-4
    atol: float = 1e-5

    def script(self, inputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], actual) -> str:
        """``repro.py``: ``actual`` is the outputs the runtime gives, or the error text it raises."""
        imports, runner = RUNNERS[self.runner]
        body = "\n".join("    " + line for line in runner.replace("{CONFIG}", self.config).splitlines())
        files = (("input", list(inputs)), ("expected", list(expected)))
        error = " ".join(actual.split()) if isinstance(actual, str) else ""
        return SCRIPT.format(
            title=self.title, imports=imports, files=files, error=error, runner=body, rtol=self.rtol, atol=self.atol
        )


# ------------------------------------------------------------------ the repros
def _circular_batch_wrap():
    past = np.zeros((3, 2, 1), np.float32)  # batch 3 > max_seq 2
    update = np.array([[[1]], [[2]], [[3]]], np.float32)
    indices = np.array([0, 0, 0], np.int64)
    expected = reference.tensor_scatter(past, update, indices, axis=1, mode="circular")
    model = single_node_model(
        "TensorScatter",
        24,
        {"past_cache": past, "update": update, "write_indices": indices},
        {"present_cache": expected},
        mode="circular",
        axis=1,
    )
    return model, {"past_cache": past, "update": update, "write_indices": indices}, {"present_cache": expected}


def _circular_batch_wrap_actual(feeds):
    """onnx 1.19-1.22: np.mod over the whole index tuple, so batch 2 lands in batch 0."""
    out = feeds["past_cache"].copy()
    for b in range(out.shape[0]):
        index = np.mod((b, int(feeds["write_indices"][b]), 0), out.shape[1])
        out[tuple(index)] = feeds["update"][b, 0, 0]
    return {"present_cache": out}


def _window_model():
    rng = seeded(7)
    q = rng.randn(1, 1, 1, 4).astype(np.float32)
    k = rng.randn(1, 1, 6, 4).astype(np.float32)
    v = rng.randn(1, 1, 6, 4).astype(np.float32)
    nonpad = np.array([6], np.int64)
    y = reference.attention(q, k, v, nonpad_kv_seqlen=nonpad, is_causal=1, left_window_size=1).y
    inputs = {"Q": q, "K": k, "V": v, "nonpad_kv_seqlen": nonpad}
    model = single_node_model(
        "Attention",
        25,
        {"Q": q, "K": k, "V": v, "attn_mask": None, "past_key": None, "past_value": None, "nonpad_kv_seqlen": nonpad},
        {"Y": y},
        is_causal=1,
        left_window_size=1,
    )
    return model, inputs, {"Y": y}


def _window_actual(feeds):
    """The unwindowed result: the window attributes are dropped."""
    f = feeds
    return {"Y": reference.attention(f["Q"], f["K"], f["V"], nonpad_kv_seqlen=f["nonpad_kv_seqlen"], is_causal=1).y}


def _loop_model():
    b = graph_builder("loop_empty_condition", {"": 21})
    trip_count = b.input("trip_count", INT64, [])
    start = b.input("start", FLOAT, [1])

    def step(op, i, cond_in, acc_in):
        one = op.initializer(ir.tensor(np.ones(1, np.float32), name="one"))
        return op.Identity(cond_in, _outputs=["cond_out"]), op.Add(acc_in, one, _outputs=["acc_out"])

    body = b.subgraph(
        step,
        inputs=[ir.val("i", INT64, []), ir.val("cond_in", BOOL, []), ir.val("acc_in", FLOAT, [1])],
        outputs=[ir.val("cond_out", BOOL, []), ir.val("acc_out", FLOAT, [1])],
        name="body",
    )
    total = b.op.Loop(trip_count, None, start, body=body)  # None: the empty condition input
    total.type, total.shape = ir.TensorType(FLOAT), ir.Shape([1])
    b.add_output(total, "total")
    feeds = {"trip_count": np.array(3, np.int64), "start": np.zeros(1, np.float32)}
    return builder_model(b), feeds, {"total": np.array([3.0], np.float32)}


def _gather_model():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    index = np.array([[2, 0], [1, 1]], np.int64)
    expected = np.take_along_axis(data, index, axis=-1)
    model = single_node_model("GatherElements", 21, {"data": data, "indices": index}, {"output": expected}, axis=-1)
    return model, {"data": data, "indices": index}, {"output": expected}


def _inliner_model():
    # A model-local function whose attribute `alpha` has a default (2.0); the call omits it.
    alpha = ir.RefAttr("alpha", "alpha", ir.AttributeType.FLOAT)
    function = onnxscript.build_function(
        lambda op, x: op.LeakyRelu(x, alpha=alpha),
        [ir.Value(name="X")],
        domain="local",
        name="ScaledLeakyRelu",
        attributes=[ir.Attr("alpha", ir.AttributeType.FLOAT, 2.0)],
        opset_imports={"": 21},
    )
    function.outputs[0].name = "Y"
    x = np.array([-1.0, -0.5, 0.5, 1.0], np.float32)
    b = graph_builder("inliner_defaults", {"": 21, "local": 1})
    y = b.op.ScaledLeakyRelu(b.input("X", FLOAT, x.shape), _domain="local")
    y.type, y.shape = ir.TensorType(FLOAT), ir.Shape(x.shape)
    b.add_output(y, "Y")
    model = builder_model(b, [function_proto(function)])
    return model, {"X": x}, {"Y": np.where(x < 0, 2.0 * x, x).astype(np.float32)}


def _swiglu_model():
    a = np.array([[-2.0, -0.5, 0.0, 1.5]], np.float32)
    b = np.array([[1.0, 2.0, 3.0, -1.0]], np.float32)
    y = reference.swiglu(a, b)
    return single_node_model("SwiGLU", 28, {"A": a, "B": b}, {"Y": y}), {"A": a, "B": b}, {"Y": y}


def _bf16_model():
    rng = seeded(3)
    q = rng.randn(1, 1, 1, 8).astype(np.float32)
    k = rng.randn(1, 1, 8, 8).astype(np.float32) * 4
    v = rng.randn(1, 1, 8, 8).astype(np.float32)
    y = reference.attention(q, k, v).y
    model = single_node_model("Attention", 23, {"Q": q, "K": k, "V": v}, {"Y": y})
    return model, {"Q": q, "K": k, "V": v}, {"Y": y}


def _bf16_actual(feeds):
    """The same computation with every tensor rounded to bfloat16 on the way."""
    import ml_dtypes

    def bf16(x):
        return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)

    y = reference.attention(bf16(feeds["Q"]), bf16(feeds["K"]), bf16(feeds["V"])).y
    return {"Y": bf16(y)}


def _attention_case(opset, q, k, v, mask=None, past_k=None, past_v=None, nonpad=None, qk=False, **attrs):
    result = reference.attention(q, k, v, mask, past_k, past_v, nonpad, **attrs)
    outputs = {
        "Y": result.y,
        "present_key": result.present_key if past_k is not None else None,
        "present_value": result.present_value if past_k is not None else None,
        "qk_matmul_output": result.qk if qk else None,
    }
    inputs = {"Q": q, "K": k, "V": v, "attn_mask": mask, "past_key": past_k, "past_value": past_v}
    if opset >= 24:
        inputs["nonpad_kv_seqlen"] = nonpad
    model = single_node_model("Attention", opset, inputs, outputs, **attrs)
    present = {n: a for n, a in inputs.items() if a is not None}
    return model, present, {n: a for n, a in outputs.items() if a is not None}


def _qkv(seed: int, q_len: int, kv_len: int, scale: float = 1.0):
    rng = seeded(seed)
    q = (rng.randn(1, 1, q_len, 2) * scale).astype(np.float32)
    return q, (rng.randn(1, 1, kv_len, 2) * scale).astype(np.float32), rng.randn(1, 1, kv_len, 2).astype(np.float32)


def _mode0_softcap():
    return _attention_case(24, *_qkv(11, 1, 2, scale=3.0), qk=True, softcap=2.0)


def _mode0_softcap_actual(feeds):
    result = reference.attention(feeds["Q"], feeds["K"], feeds["V"], softcap=2.0, qk_matmul_output_mode=1)
    return {"Y": result.y, "qk_matmul_output": result.qk}


def _mode2_mask():
    q, k, v = _qkv(12, 1, 2)
    return _attention_case(24, q, k, v, np.array([[True, False]]), qk=True, qk_matmul_output_mode=2)


def _mode2_mask_actual(feeds):
    model, inputs, expected = _mode2_mask()
    qk = np.where(np.isneginf(expected["qk_matmul_output"]), np.finfo(np.float32).min, expected["qk_matmul_output"])
    return {"Y": expected["Y"], "qk_matmul_output": qk.astype(np.float32)}


def _short_mask():
    q, k, v = _qkv(13, 1, 4)
    return _attention_case(24, q, k, v, np.array([[True, True]]), nonpad=np.array([2], np.int64))


def _causal_past():
    rng = seeded(14)
    q, k, v = _qkv(14, 1, 2)
    past_k, past_v = rng.randn(1, 1, 1, 2).astype(np.float32), rng.randn(1, 1, 1, 2).astype(np.float32)
    return _attention_case(23, q, k, v, None, past_k, past_v, is_causal=1)


def _causal_past_actual(feeds):
    """Causal offset total_len - q_len = 2: every key is visible, as without is_causal."""
    f = feeds
    result = reference.attention(f["Q"], f["K"], f["V"], None, f["past_key"], f["past_value"])
    return {"Y": result.y, "present_key": result.present_key, "present_value": result.present_value}


def _tract_window():
    q, k, v = _qkv(17, 4, 4)
    return _attention_case(25, q, k, v, is_causal=1, left_window_size=1)


def _tract_window_actual(feeds):
    """Plain causal attention: every earlier key is attended, the window is dropped."""
    return {"Y": reference.attention(feeds["Q"], feeds["K"], feeds["V"], is_causal=1).y}


def _bool_mask():
    rng = seeded(15)
    q = rng.randn(1, 1, 1, 2).astype(np.float32)
    k = rng.randn(1, 1, 2, 2).astype(np.float32)
    v = rng.randn(1, 1, 2, 4).astype(np.float32)  # a value head of its own: tract runs the bool mask
    return _attention_case(23, q, k, v, np.array([[True, False]]))


def _bool_mask_actual(feeds):
    """The mask cast to float and added: True scores get +1, False keys are still attended."""
    f = feeds
    return {"Y": reference.attention(f["Q"], f["K"], f["V"], f["attn_mask"].astype(np.float32)).y}


def _linear_attention_empty():
    """T = 0: no new token, so the output is empty and present_state is past_state."""
    rng = seeded(21)
    feeds = {
        "query": np.zeros((1, 0, 4), np.float32),
        "key": np.zeros((1, 0, 4), np.float32),
        "value": np.zeros((1, 0, 4), np.float32),
        "past_state": rng.randn(1, 2, 2, 2).astype(np.float32),
        "decay": np.zeros((1, 0, 2), np.float32),
        "beta": np.zeros((1, 0, 2), np.float32),
    }
    output, present = reference.linear_attention(**feeds, q_num_heads=2, kv_num_heads=2)
    expected = {"output": output, "present_state": present}
    return single_node_model("LinearAttention", 27, feeds, expected, q_num_heads=2, kv_num_heads=2), feeds, expected


def _causal_past_top_left_actual(feeds):
    """Causal offset 0: the single new query sees only the first cached key."""
    f = feeds
    k = np.concatenate([f["past_key"], f["K"]], axis=2)
    v = np.concatenate([f["past_value"], f["V"]], axis=2)
    y = reference.attention(f["Q"], k, v, is_causal=1).y
    return {"Y": y, "present_key": k, "present_value": v}


ALL: tuple[Repro, ...] = (
    Repro(
        "onnx-linearattention-body-empty-sequence",
        "onnx/onnx",
        "LinearAttention-27's function body fails on an empty sequence (T = 0): Reshape with -1 of a size-0 tensor",
        "onnxruntime",
        _linear_attention_empty,
        lambda feeds: (
            "The input tensor cannot be reshaped to the requested shape. "
            "Input shape:{1,0,2}, requested shape:{1,0,-1,1}"
        ),
        "LinearAttention-27: 'Equivalent to running the recurrent update sequentially for each token' (over no "
        "token the state is unchanged); past_state/present_state '(B, H_kv, d_k, d_v)'.",
        ("onnxruntime", "onnx"),
        "onnxruntime 1.32 has no LinearAttention kernel: it runs the schema's context-dependent function body "
        "(defs.cc), whose Reshape to (B, T, -1, D) cannot infer -1 when T = 0. onnx's ReferenceEvaluator, which "
        "runs op_linear_attention.py instead of the body, returns the expected outputs. Found while probing "
        "the op's edges; the conformance fuzzer draws T = 0 too.",
    ),
    Repro(
        "onnx-tensorscatter-circular-batch-wrap",
        "onnx/onnx",
        "onnx reference TensorScatter circular mode wraps the batch index when batch > max_sequence_length",
        "reference",
        _circular_batch_wrap,
        _circular_batch_wrap_actual,
        'TensorScatter-24: \'When the mode attribute is set to "circular", the write index is modulo '
        "max_sequence_length' (only the sequence index).",
        ("onnx",),
        "Fixed by onnx#8353 (onnx 1.23); present in onnx 1.19.0-1.22.0. The script exits 0 on onnx 1.23.2.",
    ),
    Repro(
        "openvino-attention25-window-ignored",
        "openvinotoolkit/openvino",
        "OpenVINO ONNX frontend imports Attention-25 but ignores left_window_size/right_window_size",
        "openvino",
        _window_model,
        _window_actual,
        "Attention-25: 'A query at absolute position p = offset + query_index attends keys j satisfying "
        "p - left_window_size <= j <= p + right_window_size for each nonnegative bound.'",
        ("openvino",),
        config="{'INFERENCE_PRECISION_HINT': 'f32'}",
    ),
    Repro(
        "onnx-reference-loop-empty-condition",
        "onnx/onnx",
        "ReferenceEvaluator runs no iteration of a Loop whose condition input is empty",
        "reference",
        _loop_model,
        lambda feeds: {"total": np.zeros(1, np.float32)},
        "Loop: 'Both inputs M and cond are optional' ... 'input (\"\", \"\"): for (int i=0; ; ++i)' and "
        "'input (trip_count, \"\") // Note this is analogous to a for loop'.",
        ("onnx",),
        "onnxscript emits this form for a Python `for` loop; onnxruntime runs it correctly.",
    ),
    Repro(
        "onnx-reference-gatherelements-negative-axis",
        "onnx/onnx",
        "ReferenceEvaluator GatherElements rejects a valid negative axis when index and data differ on that axis",
        "reference",
        _gather_model,
        lambda feeds: "ValueError: Except for dimension -1, all dimensions of index and self should be the same size.",
        "GatherElements: 'axis: Which axis to gather on. Negative value means counting dimensions from the "
        "back. Accepted range is [-r, r-1]'; indices may be smaller than data along axis.",
        ("onnx",),
        "gather_numpy slices index.shape[:dim] + index.shape[dim + 1:] without normalising dim.",
    ),
    Repro(
        "onnx-inliner-drops-attribute-defaults",
        "onnx/onnx",
        "onnx.inliner.inline_local_functions drops a model-local function's attribute defaults",
        "inliner",
        _inliner_model,
        lambda feeds: {"Y": np.where(feeds["X"] < 0, 0.01 * feeds["X"], feeds["X"]).astype(np.float32)},
        "IR: FunctionProto.attribute_proto holds 'attributes with default values'; a node that omits the "
        "attribute uses that default.",
        ("onnx",),
        "The inlined LeakyRelu loses alpha, so the op default 0.01 applies instead of the function's 2.0.",
    ),
    Repro(
        "onnx-reference-local-function-attribute-default",
        "onnx/onnx",
        "ReferenceEvaluator fails on a model-local function called without an attribute that has a default",
        "reference",
        _inliner_model,
        lambda feeds: (
            "TypeError: Issues with types [<class 'numpy.ndarray'>] and attributes [] and linked "
            "attributes=[] (operator 'OpFunction')."
        ),
        "IR: FunctionProto.attribute_proto holds 'attributes with default values'; a node that omits the "
        "attribute uses that default.",
        ("onnx",),
        "The same model as onnx-inliner-drops-attribute-defaults; onnxruntime runs it. Found by the zoo "
        "regression case conformance_regressions/local_function_attribute_default.",
    ),
    Repro(
        "onnxruntime-swiglu28-no-swish24-kernel",
        "microsoft/onnxruntime",
        "onnxruntime CPU cannot run SwiGLU-28: its function body needs Swish-24, which has no CPU kernel",
        "onnxruntime",
        _swiglu_model,
        lambda feeds: "NOT_IMPLEMENTED : Could not find an implementation for Swish(24)",
        "SwiGLU-28: 'Y = Swish_alpha(A) * B' (a function op whose body is Swish-24 then Mul).",
        ("onnxruntime", "onnx"),
    ),
    Repro(
        "openvino-bf16-default-precision",
        "openvinotoolkit/openvino",
        "OpenVINO CPU computes an f32 model in bf16 by default on CPUs with bf16 support",
        "openvino",
        _bf16_model,
        _bf16_actual,
        "ONNX types: a tensor(float) output is IEEE 754 single precision; nothing in the model asks for bf16.",
        ("openvino",),
        "Only reproduces on CPUs with bf16 (AVX512_BF16/AMX): elsewhere the default hint is f32 and the "
        "script exits 0. The matrix compiles with INFERENCE_PRECISION_HINT=f32.",
    ),
    Repro(
        "onnx-reference-attention-qk-mode0-softcap",
        "onnx/onnx",
        "ReferenceEvaluator Attention returns softcapped scores for qk_matmul_output_mode 0",
        "reference",
        _mode0_softcap,
        _mode0_softcap_actual,
        "Attention qk_matmul_output_mode: '0 (default): raw QK matmul result; "
        "1: after softcap (before bias addition)'.",
        ("onnx",),
        "onnx/reference/ops/op_attention.py assigns the softcapped product back to qk_matmul_output before it "
        "selects the mode. Found by the conformance fuzzer.",
    ),
    Repro(
        "onnxruntime-attention-qk-mode2-lowest-not-inf",
        "microsoft/onnxruntime",
        "onnxruntime CPU Attention writes float lowest instead of -inf into qk_matmul_output mode 2",
        "onnxruntime",
        _mode2_mask,
        _mode2_mask_actual,
        "Attention: 'a boolean attn_mask intersects the allowed set (its disallowed positions contribute -inf to "
        "the bias)'; mode 2 is 'QK + softcap + bias'.",
        ("onnxruntime",),
        "Y is right; only the debug output differs. Found by the conformance fuzzer.",
    ),
    Repro(
        "onnxruntime-attention-short-mask-rejected",
        "microsoft/onnxruntime",
        "onnxruntime CPU Attention-24 rejects an attn_mask shorter than K/V with nonpad_kv_seqlen",
        "onnxruntime",
        _short_mask,
        lambda feeds: "inconsistent total_sequence_length (between attn_mask and past_key and past_value)",
        "Attention-24: 'the kv_sequence dimension of attn_mask can be shorter than K and V, but still needs to be "
        "at least as long as the maximum value of nonpad_kv_seqlen'.",
        ("onnxruntime",),
        "Found by the conformance fuzzer.",
    ),
    Repro(
        "openvino-attention-causal-past-offset",
        "openvinotoolkit/openvino",
        "OpenVINO Attention is_causal with past_key uses offset total - q_len instead of past_sequence_length",
        "openvino",
        _causal_past,
        _causal_past_actual,
        "Attention: 'offset = past_sequence_length when past_key is provided'; query i attends key j iff "
        "j <= i + offset.",
        ("openvino",),
        "Only differs when the new K is not as long as Q. Found by the conformance fuzzer (shrunk by hypothesis).",
        config="{'INFERENCE_PRECISION_HINT': 'f32'}",
    ),
    Repro(
        "onnxruntime-attention-causal-past-offset",
        "microsoft/onnxruntime",
        "onnxruntime CPU Attention is_causal with past_key uses offset total - q_len instead of past_sequence_length",
        "onnxruntime",
        _causal_past,
        _causal_past_actual,
        "Attention: 'offset = past_sequence_length when past_key is provided'; query i attends key j iff "
        "j <= i + offset.",
        ("onnxruntime",),
        "Only differs when the new K is not as long as Q (the same model as the OpenVINO repro). Found by the "
        "conformance fuzzer (shrunk by hypothesis).",
    ),
    Repro(
        "tract-attention-causal-past-top-left",
        "sonos/tract",
        "tract Attention is_causal with past_key is aligned top-left (offset 0) instead of at past_sequence_length",
        "tract",
        _causal_past,
        _causal_past_top_left_actual,
        "Attention: 'offset = past_sequence_length when past_key is provided'; query i attends key j iff "
        "j <= i + offset.",
        ("tract",),
        "Found by the conformance fuzzer (shrunk by hypothesis).",
    ),
    Repro(
        "tract-attention-bool-mask-added",
        "sonos/tract",
        "tract Attention adds a bool attn_mask as 1.0/0.0 instead of excluding the False keys",
        "tract",
        _bool_mask,
        _bool_mask_actual,
        "Attention: 'a boolean attn_mask intersects the allowed set (its disallowed positions contribute -inf to "
        "the bias)'.",
        ("tract",),
        "With equal key and value head sizes tract refuses the same mask at load time (FlashSDPA: 'Mask must be "
        "floating point'). Found by the conformance fuzzer (shrunk by hypothesis).",
    ),
    Repro(
        "tract-attention25-window-ignored",
        "sonos/tract",
        "tract imports Attention-25 but ignores left_window_size/right_window_size",
        "tract",
        _tract_window,
        _tract_window_actual,
        "Attention-25: 'A query at absolute position p = offset + query_index attends keys j satisfying "
        "p - left_window_size <= j <= p + right_window_size for each nonnegative bound.'",
        ("tract",),
        "Found by onnx's own backend cases test_attention_local_window, test_attention_3d_local_window, "
        "test_attention_bidirectional_window and test_attention_local_window_with_past "
        "(conformance/onnx_cases.py).",
    ),
)


def _text(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array).ravel(), precision=4, max_line_width=200)


def issue_text(repro: Repro, expected: Mapping[str, np.ndarray], actual) -> str:
    versions = ", ".join(f"{p} {version(p)}" for p in repro.packages)
    lines = [
        f"# {repro.title}",
        "",
        f"For: {repro.project}. Versions: {versions}, Python {sys.version_info.major}.{sys.version_info.minor}, "
        "CPU, Linux x86-64.",
        "",
        "## Reproduce",
        "",
        "```bash",
        "python repro.py   # exit status 1 while the difference is there, 0 once fixed, 2 if it cannot run",
        "```",
        "",
        "`model.onnx` is a single-node model; `input_*.npy` are its inputs.",
        "",
        "## Expected",
        "",
        "From a float64 numpy implementation of the spec text (`expected_*.npy`):",
        "",
    ]
    lines += [f"- `{n}` = `{_text(a)}`" for n, a in expected.items()]
    lines += ["", "## Actual", ""]
    if isinstance(actual, str):
        lines.append(f"The runtime refuses or fails on the model: `{actual}`")
    else:
        lines += [
            f"- `{n}` = `{np.array2string(a.ravel(), precision=4, max_line_width=200)}`" for n, a in actual.items()
        ]
    lines += ["", "## Spec", "", f"> {repro.spec}", ""]
    if repro.notes:
        lines += ["## Notes", "", repro.notes, ""]
    return "\n".join(lines)


def write(repro: Repro, root: Path = REPROS) -> Path:
    folder = root / repro.slug
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    model, inputs, expected = repro.build()
    actual = repro.actual(inputs)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    for prefix, arrays in (
        ("input_", inputs),
        ("expected_", expected),
        ("actual_", {} if isinstance(actual, str) else actual),
    ):
        for name, array in arrays.items():
            np.save(folder / f"{prefix}{name}.npy", np.asarray(array))
    (folder / "repro.py").write_text(repro.script(inputs, expected, actual))
    (folder / "ISSUE.md").write_text(issue_text(repro, expected, actual))
    return folder


def main() -> None:
    for repro in ALL:
        print(write(repro))


if __name__ == "__main__":
    main()
