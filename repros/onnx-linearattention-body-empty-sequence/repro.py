"""LinearAttention-27's function body fails on an empty sequence (T = 0): Reshape with -1 of a size-0 tensor. Exit 1: reproduced; 0: fixed; 2: could not run (missing package or file, other error)."""
import pathlib, sys
HERE, ERROR = pathlib.Path(__file__).parent, 'The input tensor cannot be reshaped to the requested shape. Input shape:{1,0,2}, requested shape:{1,0,-1,1}'  # ERROR: the runtime's recorded error, if any
def end(status, *words): print(" ".join(" ".join(map(str, words)).split())[:400]); sys.exit(status)
try:
    import numpy as np, onnxruntime as ort
    feeds, expected = ({n: np.load(HERE / f"{kind}_{n}.npy") for n in names} for kind, names in (('input', ['query', 'key', 'value', 'past_state', 'decay', 'beta']), ('expected', ['output', 'present_state'])))
except (ImportError, OSError) as err:
    end(2, "COULD NOT RUN:", f"{type(err).__name__}:", err)
try:
    sess = ort.InferenceSession(str(HERE / 'model.onnx'), providers=['CPUExecutionProvider'])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    bad = [n for n in expected if not np.allclose(got[n], expected[n], rtol=0.0001, atol=1e-05)]
except Exception as err:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    end(1, "REPRODUCED:", text) if ERROR and ERROR in text else end(2, "COULD NOT RUN (another error):", text)
if bad:
    end(1, "REPRODUCED:", bad[0], "expected", expected[bad[0]].ravel()[:8], "got", np.asarray(got[bad[0]]).ravel()[:8])
end(0, "FIXED: every output matches the spec reference")
