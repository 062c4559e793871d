"""tract imports Attention-25 but ignores left_window_size/right_window_size. Exit 1: the difference is still there; 0: fixed."""
import pathlib, sys
import numpy as np
np.set_printoptions(linewidth=10**4)
HERE = pathlib.Path(__file__).parent
def arrays(prefix):
    return {p.stem[len(prefix):]: np.load(p) for p in sorted(HERE.glob(prefix + "*.npy"))}
feeds, expected = arrays("input_"), arrays("expected_")
try:
    import onnx, tract
    graph = onnx.load(HERE / 'model.onnx').graph
    model = tract.onnx().load(str(HERE / 'model.onnx')).into_model().into_runnable()
    got = {o.name: r.to_numpy() for o, r in zip(graph.output, model.run([feeds[i.name] for i in graph.input]))}
except Exception as err:  # the runtime refuses the model
    print("REPRODUCED:", type(err).__name__, str(err).splitlines()[0][:200]); sys.exit(1)
for name, want in expected.items():
    if not np.allclose(got[name], want, rtol=0.0001, atol=1e-05):
        print("REPRODUCED:", name, "expected", want.ravel()[:8], "got", np.asarray(got[name]).ravel()[:8])
        sys.exit(1)
print("FIXED: every output matches the spec reference"); sys.exit(0)
