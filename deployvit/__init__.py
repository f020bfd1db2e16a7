"""deployvit: find the most accurate Vision Transformer that fits a latency budget on a given GPU and
runtime, retrain it, and ship it as a verified ONNX / TensorRT artifact."""

__version__ = "0.1.0"
