"""The torch-free runtime: load an exported bundle and score images with OpenVINO or ONNX Runtime.

    from fre_edge.runtime import load_detector
    det = load_detector("bundle/")                 # OpenVINO on CPU, f32
    result = det.predict("part.png")               # score, anomalous, anomaly_map, mask, bbox
    results = det.predict_batch([img1, img2])

Imports numpy, Pillow and the chosen runtime only: never torch, torchvision or nncf.
"""

from .adapters import InferenceAdapter
from .bundle import SCHEMA_VERSION, read_manifest
from .detector import AnomalyDetector, BackboneOnly, Prediction, load_backbone_only, load_detector

__all__ = ["AnomalyDetector", "BackboneOnly", "InferenceAdapter", "Prediction", "load_backbone_only",
           "load_detector", "read_manifest", "SCHEMA_VERSION"]
