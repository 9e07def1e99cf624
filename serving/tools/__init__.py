"""Offline tools: ONNX export, evaluation and its report, SageMaker deployment; never on the request path."""
