"""tract imports Attention-25 but ignores left_window_size/right_window_size. Exit 1: reproduced; 0: fixed; 2: could not run (missing package or file, other error)."""
import pathlib, sys
HERE, ERROR = pathlib.Path(__file__).parent, ''  # ERROR: the runtime's recorded error, if any
def end(status, *words): print(" ".join(" ".join(map(str, words)).split())[:400]); sys.exit(status)
try:
    import numpy as np, onnx, tract
    feeds, expected = ({n: np.load(HERE / f"{kind}_{n}.npy") for n in names} for kind, names in (('input', ['Q', 'K', 'V']), ('expected', ['Y'])))
except (ImportError, OSError) as err:
    end(2, "COULD NOT RUN:", f"{type(err).__name__}:", err)
try:
    graph = onnx.load(HERE / 'model.onnx').graph
    model = tract.onnx().load(str(HERE / 'model.onnx')).into_model().into_runnable()
    got = {o.name: r.to_numpy() for o, r in zip(graph.output, model.run([feeds[i.name] for i in graph.input]))}
    bad = [n for n in expected if not np.allclose(got[n], expected[n], rtol=0.0001, atol=1e-05)]
except Exception as err:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    end(1, "REPRODUCED:", text) if ERROR and ERROR in text else end(2, "COULD NOT RUN (another error):", text)
if bad:
    end(1, "REPRODUCED:", bad[0], "expected", expected[bad[0]].ravel()[:8], "got", np.asarray(got[bad[0]]).ravel()[:8])
end(0, "FIXED: every output matches the spec reference")
