"""The Open Inference Protocol (KServe v2, Triton's ``inference.GRPCInferenceService``).

A second door to the same models as the typed API: ``servicer`` holds the RPCs, ``vision`` the
vision view's tensors (encoded images in, detections out), ``raw`` the raw view's (the ONNX
graph's own), ``tensors`` what every view shares (BYTES framing, request parameters), ``naming``
how a model's views are named, ``config`` and ``statistics`` the ModelConfig and ModelStatistics
answers.
"""

from visionrpc.server.oip.servicer import SERVICE_NAME, OpenInferenceServicer

__all__ = ["SERVICE_NAME", "OpenInferenceServicer"]
