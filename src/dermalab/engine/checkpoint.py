"""Self-describing checkpoints in plain types, written atomically.

A checkpoint holds the model, optimiser, scheduler and scaler states, the epoch, early-stopping
state, history, the resolved config, class names, backbone, normalisation and image size, so a
predictor needs nothing else and ``torch.load(weights_only=True)`` can read it (no pickled
classes). It is written to a temporary file in the same folder and renamed over the old one:
a kill -9 mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dermalab.atomic import atomic_path

CHECKPOINT_FORMAT = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``payload`` with ``torch.save``."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a dermalab checkpoint (format {CHECKPOINT_FORMAT})")
    return obj
