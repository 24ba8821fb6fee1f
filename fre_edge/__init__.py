"""fre-edge: FRE visual anomaly detection from fitting to a torch-free CPU runtime.

The package is split along the data flow: fitting (``fre_edge.fit`` and friends, needs the ``fit``
extra: torch), ``fre_edge.export`` (one OpenVINO/ONNX graph), ``fre_edge.runtime`` (numpy + OpenVINO or
ONNX Runtime, never torch) and ``fre_edge.bench``. Importing ``fre_edge`` itself pulls in nothing heavy.
"""

__version__ = "0.1.0"
