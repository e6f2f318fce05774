"""Out-of-distribution detection ("is this a skin photo like the training data?") and the
"not sure" threshold, both fitted on the run's own data.

OOD score: the Mahalanobis distance of the backbone's penultimate features to the closest class
mean under a shared covariance (Lee et al., NeurIPS 2018, https://arxiv.org/abs/1807.03888),
estimated with Ledoit-Wolf shrinkage (features have ~1,000 dimensions). The threshold is the
``1 - target_fpr`` quantile of the validation scores, so about ``target_fpr`` of genuine
validation images would be called "not skin".

"Not sure": a selective-classification threshold on the calibrated top probability, the
smallest one at which the validation predictions above it reach ``target_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf


@dataclass
class MahalanobisOOD:
    """Class means, shared precision matrix and the decision threshold."""

    means: np.ndarray  # (K, D)
    precision: np.ndarray  # (D, D)
    threshold: float
    # P m and m^T P m per class: fixed once fitted, so computed once, not per photo (with
    # ~1,000 features and 7 classes they cost 7x the photo's own product)
    _pm: np.ndarray = field(init=False, repr=False, compare=False)
    _quad_m: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._pm = self.means @ self.precision  # (K, D)
        self._quad_m = (self._pm * self.means).sum(axis=1)[None, :]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Min over classes of the squared Mahalanobis distance, per row.

        ``(f - m)^T P (f - m) = f^T P f - 2 f^T P m + m^T P m``: one product with ``P`` per
        batch instead of one per class.
        """
        f = np.asarray(features, np.float64)
        fp = f @ self.precision
        quad_f = (fp * f).sum(axis=1, keepdims=True)
        dist = quad_f - 2.0 * (f @ self._pm.T) + self._quad_m
        result: np.ndarray = dist.min(axis=1)
        return result

    def is_ood(self, features: np.ndarray) -> np.ndarray:
        """True where the score is above the threshold."""
        out: np.ndarray = self.score(features) > self.threshold
        return out

    def save(self, path: Path) -> None:
        """``.npz``, no pickles."""
        np.savez(path, means=self.means.astype(np.float32),
                 precision=self.precision.astype(np.float32), threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> MahalanobisOOD:
        """Read :meth:`save`'s file."""
        with np.load(path, allow_pickle=False) as z:
            return cls(z["means"].astype(np.float64), z["precision"].astype(np.float64),
                       float(z["threshold"]))


def fit_mahalanobis(train_features: np.ndarray, train_targets: np.ndarray,
                    val_features: np.ndarray, target_fpr: float = 0.02,
                    standardize: bool = False) -> MahalanobisOOD:
    """Fit means and a shrunk shared covariance on training features; threshold on validation.

    With ``standardize``, the covariance is estimated on z-scored features and mapped back
    (``P_x = D^-1 P_z D^-1``, ``D = diag(sd)``): Ledoit-Wolf shrinks towards a scaled identity,
    which would otherwise swamp the directions of features with small scales.
    """
    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_targets)
    sd = f.std(axis=0) + 1e-9 if standardize else np.ones(f.shape[1])
    classes = np.unique(y)
    means = np.stack([f[y == k].mean(axis=0) for k in classes])
    centred = (f - means[np.searchsorted(classes, y)]) / sd
    lw = LedoitWolf(assume_centered=True).fit(centred)
    precision = lw.precision_ / sd[:, None] / sd[None, :]
    partial = MahalanobisOOD(means, precision, float("inf"))
    val_scores = partial.score(val_features)
    partial.threshold = float(np.quantile(val_scores, 1.0 - target_fpr))
    return partial


def colour_statistics(images: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Low-level colour statistics per image (``(N, 23)``): mean, std and 10/50/90% quantiles
    of R, G, B; mean and std of the chromaticities r = R/(R+G+B), g = G/(R+G+B); mean and std
    of HSV saturation and value.

    Deep features alone let some structured non-photos through (a printed page, a colour wheel,
    an astronomy image); their colour statistics are far from any dermoscopic image, so a
    second, simple Mahalanobis detector on these catches them.

    Computed ``chunk`` images at a time: the float64 working copies are ~40x the uint8 input,
    so 3,000 images of 128 px at once peaked at about 6 GB.
    """
    if len(images) > chunk:
        return np.concatenate([colour_statistics(images[i:i + chunk], chunk)
                               for i in range(0, len(images), chunk)])
    # Colour only: a lesion-mask 4th channel (data.input=mask_channel) is not a colour.
    x = np.asarray(images[..., :3], np.float64).reshape(len(images), -1, 3) / 255.0
    # One sort for the three quantiles (a call per quantile sorted three times).
    stats = [x.mean(1), x.std(1), *np.quantile(x, [0.1, 0.5, 0.9], axis=1)]
    total = x.sum(2, keepdims=True) + 1e-6
    chroma = (x / total)[:, :, :2]
    v = x.max(2)
    s = (v - x.min(2)) / (v + 1e-6)
    stats += [chroma.mean(1), chroma.std(1), np.stack([s.mean(1), s.std(1), v.mean(1),
                                                       v.std(1)], 1)]
    return np.concatenate(stats, axis=1)


