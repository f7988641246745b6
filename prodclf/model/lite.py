"""The bundle's model as a TensorFlow Lite flatbuffer, run by the XNNPACK CPU kernels.

On CPUs, the same MobileNet-class network runs about twice as fast through LiteRT's
XNNPACK delegate as through TensorFlow's own kernels (``make bench`` measures both).
``export_bundle`` converts the ``serve`` endpoint once, with the bundle's pixel scaling
folded in (uint8 pixels in, the model's outputs out, any batch size), checks that the
converted model answers like the SavedModel on a fixed batch, and records the file and
its digest in ``bundle.json``; a model the converter cannot take, or that answers
differently, is simply exported without one and runs on TensorFlow. Nothing here is
imported on the driver before a worker needs it: TensorFlow is imported inside.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from prodclf.images import PreprocessSpec

log = logging.getLogger(__name__)

LITE_FILE = "model.tflite"
#: Largest difference tolerated between the converted model's outputs and the SavedModel's.
PARITY_TOLERANCE = 1e-3


def endpoint_converter(
    endpoint: Any,
    spec: PreprocessSpec,
    quantization: str = "none",
    calibration: np.ndarray | None = None,
) -> Any:
    """TFLite's converter for the endpoint behind the bundle's scaling: uint8 pixels in.

    ``quantization``: ``none`` (what bundles carry), ``int8`` (full integer, calibrated on
    ``calibration``, uint8 pixels) or ``float16`` (weights); ``benchmarks/int8.py`` measures
    what each costs in accuracy. ``.convert()`` gives the model's bytes; the converter itself
    is what TFLite's quantization debugger takes.
    """
    import tensorflow as tf

    from prodclf.model.augment import scale_tf

    @tf.function(input_signature=[tf.TensorSpec([None, *spec.shape], tf.uint8)])
    def serve(pixels: Any) -> Any:
        out = endpoint(scale_tf(pixels, spec.scale))
        return next(iter(out.values())) if isinstance(out, dict) else out

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], endpoint
    )
    if quantization == "int8":
        if calibration is None:
            raise ValueError("int8 quantization needs calibration pixels")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative(calibration)
    elif quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization != "none":
        raise ValueError(f"quantization must be none, int8 or float16, not {quantization!r}")
    return converter


def representative(pixels: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Calibration pixels one image at a time, as TFLite's converter reads them."""
    return ([pixels[i : i + 1]] for i in range(len(pixels)))


def parity_batch(spec: PreprocessSpec, rows: int = 4) -> np.ndarray:
    """Fixed uint8 pixels both models must agree on (noise plus a flat grey image)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(rows, *spec.shape), dtype=np.uint8)
    x[-1] = 128
    return x


def lite_model_for(saved_model_dir: str, spec: PreprocessSpec, endpoint_name: str) -> bytes | None:
    """A converted model that answers like the SavedModel, or None (the reason is logged)."""
    import tensorflow as tf

    from prodclf.model.augment import scale_tf

    loaded = tf.saved_model.load(saved_model_dir)
    endpoint = getattr(loaded, endpoint_name)
    try:
        data: bytes = endpoint_converter(endpoint, spec).convert()
    except Exception as exc:  # the converter refuses ops it has no kernel for
        log.warning("no TFLite model in the bundle (conversion failed: %s)", str(exc)[:300])
        return None
    x = parity_batch(spec)
    expected = endpoint(scale_tf(tf.constant(x), spec.scale))
    if isinstance(expected, dict):
        expected = next(iter(expected.values()))
    got = LitePredict(data, threads=1)(x)
    diff = float(np.max(np.abs(got - np.asarray(expected))))
    if not diff <= PARITY_TOLERANCE:
        log.warning("no TFLite model in the bundle: it differs from the SavedModel by %.3g", diff)
        return None
    return data


def lite_entry(data: bytes) -> dict[str, Any]:
    """What ``bundle.json`` records of the converted model."""
    return {"file": LITE_FILE, "sha256": hashlib.sha256(data).hexdigest()}


def interpreter_class() -> Any:
    """LiteRT's interpreter where it is installed, else the one TensorFlow still ships."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter


class LitePredict:
    """A predict function over one interpreter: uint8 pixels in, outputs out.

    The interpreter is resized when the batch shape changes (the tagging UDF always
    sends one fixed shape, so once) and used by one thread at a time.
    """

    def __init__(self, model: bytes, threads: int = 0) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self._interpreter = interpreter_class()(
                model_content=model, num_threads=threads if threads > 0 else None
            )
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] = ()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8:
            raise TypeError(f"the model takes uint8 pixels, not {x.dtype}")
        with self._lock:
            if x.shape != self._shape:
                self._interpreter.resize_tensor_input(self._input, list(x.shape), strict=False)
                self._interpreter.allocate_tensors()
                self._shape = x.shape
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(x))
            self._interpreter.invoke()
            out: np.ndarray = self._interpreter.get_tensor(self._output).copy()
        return out
