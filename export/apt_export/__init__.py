"""apt_export: APT bundle -> ONNX graphs -> TensorRT engines, with parity reports and benchmarks."""
