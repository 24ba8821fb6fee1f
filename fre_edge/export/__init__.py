"""Export a fitted FRE model as one graph: uint8 pixels in, ``score`` and ``anomaly_map`` out.

``export_bundle`` writes ONNX and OpenVINO IR plus a manifest into a bundle folder atomically.
"""

from .bundle_writer import export_bundle

__all__ = ["export_bundle"]
