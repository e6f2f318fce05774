"""Backbone registry: real offline ImageNet weights, clear failures, every backbone builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from dermalab.core.config import ModelConfig
from dermalab.core.errors import ConfigError, PretrainedWeightsUnavailableError
from dermalab.core.models import (
    REGISTRY,
    build_for_inference,
    cam_target_layer,
    create_model,
    early_stage_parameters,
    load_pretrained_body,
    set_body_trainable,
)

CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # ImageNet tabby .. lynx (domestic/wild cats)


def _imagenet_top5(backbone: str) -> list[int]:
    from skimage import data as skdata

    model = timm.create_model(backbone, pretrained=False)
    origin = load_pretrained_body(model, ModelConfig(backbone=backbone))
    assert origin.startswith("package:")
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(skdata.chelsea()))[None]
    with torch.no_grad():
        return model(x).topk(5).indices[0].tolist()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_offline_weights_are_real_imagenet_weights(backbone: str) -> None:
    top5 = _imagenet_top5(backbone)
    assert top5[0] in CAT_CLASSES, f"{backbone} top-1 on the cat photo was class {top5[0]}"
    assert len(CAT_CLASSES & set(top5)) >= 2


def test_random_weights_do_not_see_a_cat() -> None:
    """Control for the test above: the cat test can fail."""
    from skimage import data as skdata

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = timm.data.create_transform(**timm.data.resolve_model_data_config(model))(
        Image.fromarray(skdata.chelsea()))[None]
    with torch.no_grad():
        top1 = model(x).argmax().item()
    assert top1 not in CAT_CLASSES


def test_unavailable_pretrained_weights_fail_with_the_ways_to_supply_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        create_model(ModelConfig(backbone="resnet18"), 7)
    msg = str(info.value)
    for hint in ("model.weights=", "HF_HUB_CACHE", "tf_efficientnet_lite0",
                 "model.pretrained=false"):
        assert hint in msg


def test_no_network_refuses_hub_only_weights_without_asking_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without HF_HUB_OFFLINE and without a network, one short probe replaces the hub
    client's retries: the hub download is never attempted."""
    import socket

    with socket.socket() as s:  # a port on this machine with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    real_create = timm.create_model
    asked: list[str] = []

    def create(name: str, pretrained: bool = False, **kw: object) -> torch.nn.Module:
        if pretrained:
            asked.append(name)
        return real_create(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        create_model(ModelConfig(backbone="resnet18"), 7)
    assert asked == []
    assert f"127.0.0.1:{port} cannot be reached" in str(info.value)
    assert "model.weights=" in str(info.value)


def test_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    donor = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(donor.state_dict(), path)
    model, data_cfg, origin = create_model(ModelConfig(backbone="resnet18", weights=str(path)), 3)
    assert origin == f"file:{path}"
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.get_classifier().out_features == 3
    assert data_cfg["input_size"] == (3, 224, 224)
    with pytest.raises(PretrainedWeightsUnavailableError, match="not found"):
        create_model(ModelConfig(backbone="resnet18", weights=str(tmp_path / "no.pth")), 3)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_backbone_builds_and_has_a_cam_layer(name: str) -> None:
    model, data_cfg, origin = create_model(ModelConfig(backbone=name, pretrained=False), 4)
    assert origin == "random" and len(data_cfg["mean"]) == 3
    layer = cam_target_layer(model, name)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert out.shape == (1, 4)
    assert seen and len(seen[0]) == 4, f"{name}: CAM layer output is not a feature map"
    same = build_for_inference(name, 4)
    same.load_state_dict(model.state_dict())  # checkpoints load into the inference build


def test_freeze_body_keeps_head_trainable() -> None:
    model, _, _ = create_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained=False), 3)
    set_body_trainable(model, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    set_body_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("name", "stages", "prefixes"), [
    ("tf_efficientnet_lite0", 2, ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")),
    ("resnet18", 1, ("conv1.", "bn1.", "layer1.")),
])
def test_freeze_stages_freezes_the_stem_and_the_first_stages_only(
        name: str, stages: int, prefixes: tuple[str, ...]) -> None:
    model, _, _ = create_model(ModelConfig(backbone=name, pretrained=False), 3)
    early = {id(p) for p in early_stage_parameters(model, stages)}
    names = {n for n, p in model.named_parameters() if id(p) in early}
    assert names == {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    set_body_trainable(model, True, stages)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == names
    # The head warm-up freezes the rest too; unfreezing it leaves the early stages frozen.
    set_body_trainable(model, False, stages)
    head = {n for n, p in model.named_parameters() if p.requires_grad}
    assert head == {n for n, _ in model.named_parameters() if n.split(".")[0] in
                    ("classifier", "fc")}
    set_body_trainable(model, True, stages)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == names
    assert early_stage_parameters(model, 0) == []


def test_freeze_stages_refuses_to_freeze_every_stage() -> None:
    model, _, _ = create_model(ModelConfig(backbone="resnet18", pretrained=False), 3)
    assert len(early_stage_parameters(model, 3)) > 0  # layer4 still learns
    with pytest.raises(ConfigError, match=r"freeze_stages=4 leaves nothing.*at most 3"):
        early_stage_parameters(model, 4)
