"""Serving bundles to many lines over the KServe v2 inference protocol.

- :mod:`.kserve_model` / :mod:`.server`: ``fre-edge serve``, bundles on KServe's Python model server
  (HTTP and gRPC; needs the ``serve`` extra).
- :mod:`.repository`: a bundle laid out as a model repository that OpenVINO Model Server and Triton
  serve as it is (writes files only: no extra needed).

The client side, a detector whose graph runs on any of these servers, is the ``kserve`` backend of
:func:`fre_edge.runtime.load_detector` (needs the ``remote`` extra).

Importing this package imports neither kserve nor a runtime.
"""
