"""The "not skin" detectors of ``deploy/ood.py`` against references: the Mahalanobis score
against SciPy's distance, its threshold against the validation quantile, its file round trip,
and the colour statistics against NumPy computed per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.distance import mahalanobis

from dermalab.deploy.ood import MahalanobisOOD, colour_statistics, fit_mahalanobis


def _features(rng: np.random.Generator, n: int = 400, d: int = 12, k: int = 3
              ) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 4, (k, d))
    return centres[y] + rng.normal(0, 1, (n, d)) * rng.uniform(0.2, 3, d), y


def test_the_score_is_the_squared_distance_to_the_closest_class_mean() -> None:
    rng = np.random.default_rng(0)
    x, y = _features(rng)
    det = fit_mahalanobis(x, y, x[:100])
    probe = rng.normal(0, 5, (20, x.shape[1]))
    want = [min(mahalanobis(f, m, det.precision) ** 2 for m in det.means) for f in probe]
    np.testing.assert_allclose(det.score(probe), want, rtol=1e-9, atol=1e-9)
    # one row at a time (as the server scores one photo) gives the same as a batch
    np.testing.assert_allclose([det.score(f[None])[0] for f in probe], want, rtol=1e-9)


def test_the_threshold_passes_all_but_the_target_share_of_validation() -> None:
    rng = np.random.default_rng(1)
    x, y = _features(rng, n=2000)
    val = x[1000:]
    det = fit_mahalanobis(x[:1000], y[:1000], val, target_fpr=0.05)
    assert det.threshold == np.quantile(det.score(val), 0.95)
    assert abs(det.is_ood(val).mean() - 0.05) < 0.002
    assert det.is_ood(x[:5] + 100.0).all()  # far from every class: not like the training data


def test_a_saved_detector_scores_as_the_fitted_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = _features(rng)
    det = fit_mahalanobis(x, y, x[:100], standardize=True)
    det.save(tmp_path / "ood.npz")
    back = MahalanobisOOD.load(tmp_path / "ood.npz")
    assert back.threshold == det.threshold
    # stored as float32 (half the file): the scores agree to float32 precision
    np.testing.assert_allclose(back.score(x[:50]), det.score(x[:50]), rtol=1e-4)
    with np.load(tmp_path / "ood.npz", allow_pickle=False) as z:  # no pickles in the file
        assert set(z.files) == {"means", "precision", "threshold"}


def test_colour_statistics_per_image_and_in_chunks() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 8, 6, 4), dtype=np.uint8)  # a 4th (mask) channel
    stats = colour_statistics(images)
    assert stats.shape == (5, 23)
    x = images[..., :3].reshape(5, -1, 3) / 255.0  # the mask channel is not a colour
    np.testing.assert_allclose(stats[:, :3], x.mean(1))
    np.testing.assert_allclose(stats[:, 3:6], x.std(1))
    np.testing.assert_allclose(stats[:, 6:9], np.quantile(x, 0.1, axis=1))
    np.testing.assert_allclose(stats[:, 12:15], np.quantile(x, 0.9, axis=1))
    v = x.max(2)
    np.testing.assert_allclose(stats[:, 21], v.mean(1))
    np.testing.assert_allclose(colour_statistics(images, chunk=2), stats)
