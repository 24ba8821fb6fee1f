"""fre-edge: FRE visual anomaly detection from fitting to a torch-free CPU runtime.

The package is split along the data flow::

    fit/       fitting (the ``fit`` extra: torch): data, backbones, features, PCA and the FRE core, the
               detector module, thresholds, persistence, evaluation
    export/    one OpenVINO IR + ONNX graph with its manifest; INT8 with NNCF (the ``fit`` extra)
    runtime/   the bundle format and the detector: numpy + OpenVINO or ONNX Runtime, never torch
    bench.py   latency and FPS of a loaded bundle (torch-free)

Torch-free helpers beside them: ``images`` (reading and resizing, shared by fit and runtime),
``outputs`` (safe, atomic output folders), ``visualize``, ``errors``; ``cli/`` has one module per
command. Importing ``fre_edge`` itself pulls in nothing heavy.
"""

__version__ = "0.1.0"
