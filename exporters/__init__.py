"""Export a standalone deployvit (or timm) model to ONNX / TensorRT and verify the artifact."""
