"""The Open Inference Protocol (KServe v2, Triton's ``inference.GRPCInferenceService``).

A second door to the same models as the typed API: ``servicer`` holds the RPCs, ``vision`` the
vision view's tensors (encoded images in, detections out), ``tensors`` what every view shares
(BYTES framing, request parameters) and ``naming`` how a model's views are named.
"""

from visionrpc.server.oip.servicer import SERVICE_NAME, OpenInferenceServicer

__all__ = ["SERVICE_NAME", "OpenInferenceServicer"]
