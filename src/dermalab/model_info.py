"""What feeding and reading a trained model takes besides its weights: classes, normalisation,
input size, temperature, malignant operating point. Read from a training checkpoint or an
export's ``model.json``, so the PyTorch and ONNX paths cannot disagree on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    """What a predictor needs besides weights (also the exported ``model.json``)."""

    classes: list[str]
    display_names: dict[str, str]
    mean: list[float]
    std: list[float]
    image_size: int
    resize_mode: str
    backbone: str
    temperature: float = 1.0
    malignant: dict[str, Any] | None = None  # {"classes": [...], "threshold": t}
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``model.json``."""
        return {"format": 1, **asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelInfo:
        """Read ``model.json``."""
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in keys})

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ModelInfo:
        """From a training checkpoint (temperature/threshold present once analysed)."""
        return cls(
            classes=list(ckpt["classes"]),
            display_names=dict(ckpt["display_names"]),
            mean=[float(v) for v in ckpt["normalization"]["mean"]],
            std=[float(v) for v in ckpt["normalization"]["std"]],
            image_size=int(ckpt["image_size"]),
            resize_mode=str(ckpt["resize_mode"]),
            backbone=str(ckpt["backbone"]),
            temperature=float(ckpt.get("temperature", 1.0)),
            malignant=ckpt.get("malignant"),
        )
