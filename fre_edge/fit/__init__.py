"""The fitting side (``pip install "fre-edge[fit]"``: torch, torchvision, NNCF, ...).

Everything under ``fre_edge.fit`` may import torch; nothing in ``fre_edge.runtime``, ``fre_edge.images``,
``fre_edge.outputs``, ``fre_edge.bench``, ``fre_edge.visualize`` or ``fre_edge.errors`` does.

The flow: ``config`` holds the fit's settings and builds the detector they describe, ``data`` lists the
images, ``backbones`` builds the cut CNN, ``features`` runs it, ``pca`` and
``estimator`` (the :class:`FRE` linear core) fit the subspace, ``model`` is the whole detector as one
torch module (what ``fre_edge.export`` traces), ``pipeline`` (:func:`fit_fre`) ties them together and
sets the thresholds, ``persist`` saves and loads a model folder, ``evaluate`` and ``metrics`` score a
labelled test set.
"""

from .config import FitConfig
from .pipeline import FittedFRE, fit_fre

__all__ = ["FitConfig", "FittedFRE", "fit_fre"]
