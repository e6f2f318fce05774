"""Grad-CAM heat-maps with pytorch-grad-cam, on each backbone's registered target layer.

Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391) weights the target
layer's feature maps by the spatially averaged gradient of the class score; Grad-CAM++
(Chattopadhay et al., WACV 2018, https://arxiv.org/abs/1710.11063) uses higher-order gradient
weights that localise several instances better. Both come from the ``grad-cam`` package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dermalab.core.models import cam_target_layer
from dermalab.data.images import normalize_batch

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(N, S, S, 3)`` uint8 -> normalised ``(N, 3, S, S)`` float tensor."""
    return torch.from_numpy(normalize_batch(images, mean, std))


def cam_maps(
    model: nn.Module,
    backbone: str,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    class_indices: Sequence[int] | None = None,
    method: str = "gradcam",
    with_logits: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Heat-maps in [0, 1] and the model's logits.

    Args:
        model: a classifier (eval mode is set here).
        backbone: registry name (selects the target layer).
        images: ``(N, S, S, 3)`` uint8 model-input images.
        class_indices: the class to explain per image; ``None`` explains the predicted class.
        method: ``gradcam`` or ``gradcam++``.
        with_logits: also return the logits (one extra forward pass; not needed when the
            classes are given and the caller has the prediction already).

    Returns:
        ``(maps (N, S, S) float32, logits (N, K) or None)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    model.eval()
    x = to_input(images, mean, std)
    logits = None
    if with_logits or class_indices is None:
        with torch.no_grad():
            logits = model(x).float().numpy()
    chosen = class_indices if class_indices is not None else logits.argmax(1)  # type: ignore[union-attr]
    targets = [ClassifierOutputTarget(int(k)) for k in chosen]
    layer = cam_target_layer(model, backbone)
    # Gradients are needed w.r.t. activations only; keep parameter grads off where possible.
    with torch.enable_grad(), METHODS[method](model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)
    return np.asarray(maps, dtype=np.float32), logits


def overlay(image: np.ndarray, cam: np.ndarray, size: int | None = None) -> np.ndarray:
    """Heat-map blended over the image (uint8 RGB; a ``mask_channel`` input's 4th channel,
    the lesion mask, is not drawn), optionally upscaled for display."""
    img = image = np.ascontiguousarray(image[..., :3])
    heat = cam
    if size and size != image.shape[0]:
        img = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
        heat = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    out: np.ndarray = show_cam_on_image(img.astype(np.float32) / 255.0, heat, use_rgb=True,
                                        image_weight=0.55)
    return out


def has_linear_gap_head(model: nn.Module, size: int = 64) -> bool:
    """True when ``logits = W @ mean_hw(forward_features(x)) + b`` (checked numerically), the
    condition under which Grad-CAM at the final feature map has a closed form."""
    head = model.get_classifier()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        return False
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fmap = model.forward_features(x)  # type: ignore[operator]
        if fmap.ndim != 4:
            return False
        direct = model(x)
        try:
            closed = head(fmap.mean(dim=(2, 3)))
        except RuntimeError:  # e.g. VGG: an MLP sits between the features and the classifier
            return False
    return bool(closed.shape == direct.shape
                and torch.allclose(direct, closed, atol=1e-4, rtol=1e-4))


def closed_form_cam(model: nn.Module, images: np.ndarray, mean: Sequence[float],
                    std: Sequence[float], class_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM at the final feature map ``A`` for global-average-pool + linear heads.

    There ``d logit_k / d A_c(i, j) = W_kc / (h w)`` exactly, so Grad-CAM's channel weights are
    ``W_kc / (h w)`` and the map is ``ReLU(sum_c W_kc A_c)`` (Zhou et al.'s CAM, CVPR 2016),
    min-max scaled and resized like pytorch-grad-cam does. One forward pass, no backward: this
    is what makes the web service fast. Only valid when :func:`has_linear_gap_head` holds.
    """
    x = to_input(images, mean, std)
    head = model.get_classifier()  # type: ignore[operator]
    with torch.no_grad():
        fmap = model.forward_features(x)  # type: ignore[operator]
    return cam_from_feature_map(fmap.float().numpy(), head.weight.detach().float().numpy(),
                                class_indices, images.shape[1])


def cam_from_feature_map(fmap: np.ndarray, weight: np.ndarray, class_indices: Sequence[int],
                         size: int) -> np.ndarray:
    """``ReLU(sum_c W_kc A_c)``, min-max scaled to [0, 1] and resized to ``size`` (bilinear,
    half-pixel centres like OpenCV): the closed form of :func:`closed_form_cam` from an already
    computed final feature map ``(N, C, h, w)`` (e.g. the ONNX export's ``feature_map``)."""
    w = torch.from_numpy(np.asarray(weight, np.float32)[list(class_indices)])
    cam = torch.relu(torch.einsum("nc,nchw->nhw", w, torch.from_numpy(fmap)))
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    cam = cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)
    cam = torch.nn.functional.interpolate(cam[:, None], size=(size, size), mode="bilinear",
                                          align_corners=False)[:, 0]
    out: np.ndarray = cam.numpy()
    return out
