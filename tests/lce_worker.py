"""Runs a .tflite file in Larq Compute Engine's own interpreter: ``python lce_worker.py MODEL IN OUT``.

Started by tests/test_lce_export.py with a Python that has ``larq-compute-engine`` and numpy < 2
(LCE's interpreter module is built against numpy 1). It loads the interpreter's extension module
by path, so the package's ``__init__`` (which imports TensorFlow for the converter) never runs.
IN is a .npz of NHWC float32 inputs (one per sample); OUT gets the outputs of each of LCE's
binary convolution kernels (optimized BGEMM, indirect BGEMM, reference), stacked, as a .npz.
"""

import importlib.util
import sys

import numpy as np


def lce_interpreter():
    """LCE's ``interpreter_wrapper_lite`` extension module, without importing the package."""
    spec = importlib.util.find_spec("larq_compute_engine")
    if spec is None:
        raise SystemExit("larq-compute-engine is not installed in this Python")
    path = f"{spec.submodule_search_locations[0]}/tflite/python/interpreter_wrapper_lite.so"
    module_spec = importlib.util.spec_from_file_location("interpreter_wrapper_lite", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# LCE's three LceBconv2d kernels: (use_reference_bconv, use_indirect_bgemm)
KERNELS = {"bgemm": (False, False), "indirect_bgemm": (False, True), "reference": (True, False)}


def main(model_path, inputs_path, outputs_path):
    with open(model_path, "rb") as f:
        model = f.read()
    lite = lce_interpreter()
    inputs = np.load(inputs_path)["x"]
    results = {}
    for kernel, (reference, indirect) in KERNELS.items():
        interpreter = lite.LiteInterpreter(model, 1, reference, indirect, False)
        outputs = [interpreter.predict([np.ascontiguousarray(x[None], np.float32)])[0] for x in inputs]
        results[kernel] = np.concatenate(outputs)
    np.savez(outputs_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:4])
