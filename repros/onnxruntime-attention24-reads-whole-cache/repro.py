"""onnxruntime CPU Attention-24 reads every slot of K/V, not the nonpad_kv_seqlen it is given.
Exit 1: the step costs what the capacity costs (or NaN past nonpad reaches Y); 0: fixed."""
import pathlib, sys, time
import numpy as np, onnxruntime as ort
HERE, HELD = pathlib.Path(__file__).parent, 64
def step(model, capacity, fill=0.0, calls=200):  # one decode step, the cache bound in place
    s, rng = ort.InferenceSession(str(HERE / model), providers=["CPUExecutionProvider"]), np.random.default_rng(0)
    cache = np.full((2, 1, 3, capacity, 64), fill, np.float32); cache[:, :, :, :HELD] = 0.5
    b, kv = s.io_binding(), [ort.OrtValue.ortvalue_from_numpy(c) for c in cache]
    for name, value in {"q": rng.standard_normal((1, 9, 1, 64), np.float32), "k": np.ones((1, 3, 1, 64), np.float32),
                        "v": np.ones((1, 3, 1, 64), np.float32), "write_indices": np.array([HELD - 1]),
                        "nonpad_kv_seqlen": np.array([HELD])}.items(): b.bind_cpu_input(name, value)
    for kind, value in zip(("key", "value"), kv): b.bind_ortvalue_input(f"past_{kind}", value); b.bind_ortvalue_output(f"present_{kind}", value)
    b.bind_output("y"); s.run_with_iobinding(b); finite, start = bool(np.isfinite(b.get_outputs()[2].numpy()).all()), time.perf_counter()
    for _ in range(calls): s.run_with_iobinding(b)
    return (time.perf_counter() - start) / calls, finite
for model in ("model.onnx", "gqa.onnx"):
    (small, _), (large, _), (_, finite) = step(model, 128), step(model, 4096), step(model, 4096, np.nan, 1)
    print(f"{model}: 64 tokens held: {small * 1e6:.0f} us at 128 slots, {large * 1e6:.0f} us at 4096 ({large / small:.1f}x);",
          "NaN past nonpad_kv_seqlen", "is ignored" if finite else "reaches Y")
    bad = (large / small > 2 or not finite) if model == "model.onnx" else bad
print("REPRODUCED" if bad else "FIXED"); sys.exit(1 if bad else 0)
