"""ReferenceEvaluator fails on a model-local function called without an attribute that has a default. Exit 1: the difference is still there; 0: fixed."""
import pathlib, sys
import numpy as np
np.set_printoptions(linewidth=10**4)
HERE = pathlib.Path(__file__).parent
def arrays(prefix):
    return {p.stem[len(prefix):]: np.load(p) for p in sorted(HERE.glob(prefix + "*.npy"))}
feeds, expected = arrays("input_"), arrays("expected_")
try:
    from onnx.reference import ReferenceEvaluator
    ev = ReferenceEvaluator(str(HERE / 'model.onnx'))
    got = dict(zip(ev.output_names, ev.run(None, feeds)))
except Exception as err:  # the runtime refuses the model
    print("REPRODUCED:", type(err).__name__, str(err).splitlines()[0][:200]); sys.exit(1)
for name, want in expected.items():
    if not np.allclose(got[name], want, rtol=0.0001, atol=1e-05):
        print("REPRODUCED:", name, "expected", want.ravel()[:8], "got", np.asarray(got[name]).ravel()[:8])
        sys.exit(1)
print("FIXED: every output matches the spec reference"); sys.exit(0)
