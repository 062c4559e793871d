"""Backend cases this project has and onnx lacks, in onnx's own style
(``onnx/backend/test/case/node/*.py``): a class per op, an ``export_*`` static method per case
calling ``expect``, each with one line saying which gap it closes. Importing a module records
its cases in onnx's case machinery, as onnx's own modules do; ``upstream.cases.collect`` does
that and returns them."""
