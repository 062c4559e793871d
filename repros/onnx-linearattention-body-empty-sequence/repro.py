"""LinearAttention-27's function body fails on an empty sequence (T = 0): Reshape with -1 of a size-0 tensor. Exit 1: the difference is still there; 0: fixed."""
import pathlib, sys
import numpy as np
np.set_printoptions(linewidth=10**4)
HERE = pathlib.Path(__file__).parent
def arrays(prefix):
    return {p.stem[len(prefix):]: np.load(p) for p in sorted(HERE.glob(prefix + "*.npy"))}
feeds, expected = arrays("input_"), arrays("expected_")
try:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(HERE / 'model.onnx'), providers=['CPUExecutionProvider'])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
except Exception as err:  # the runtime refuses the model
    print("REPRODUCED:", type(err).__name__, str(err).splitlines()[0][:200]); sys.exit(1)
for name, want in expected.items():
    if not np.allclose(got[name], want, rtol=0.0001, atol=1e-05):
        print("REPRODUCED:", name, "expected", want.ravel()[:8], "got", np.asarray(got[name]).ravel()[:8])
        sys.exit(1)
print("FIXED: every output matches the spec reference"); sys.exit(0)
