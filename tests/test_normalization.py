"""Tests for mstoolkit.preprocessing.normalization: z-score, percentile and Nyúl standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.preprocessing import normalization


@pytest.fixture()
def brainlike():
    rng = np.random.default_rng(0)
    image = rng.gamma(4.0, 50.0, (27, 28, 29)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[1:26, 2:27, 2:28] = 1
    return image, mask


def test_zscore_has_mean_0_std_1_inside_and_0_outside(brainlike):
    image, mask = brainlike
    out = normalization.normalize_zscore(image, mask=mask)
    inside = mask > 0
    assert out[inside].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[inside].std() == pytest.approx(1.0, abs=1e-5)
    assert np.all(out[~inside] == 0)
    expected = (image[2, 3, 4] - image[inside].mean()) / image[inside].std()
    assert out[2, 3, 4] == pytest.approx(expected, rel=1e-5)


def test_percentile_maps_p1_p99_to_0_1(brainlike):
    image, mask = brainlike
    out = normalization.normalize_percentile(image, mask=mask, lower=1, upper=99)
    inside = mask > 0
    assert out.min() >= 0 and out.max() <= 1
    low, high = np.percentile(image[inside], [1, 99])
    np.testing.assert_allclose(np.percentile(out[inside], [1, 99]), [0, 1], atol=0.01)
    assert out[2, 3, 4] == pytest.approx(np.clip((image[2, 3, 4] - low) / (high - low), 0, 1), rel=1e-5)


def test_nyul_puts_percentiles_on_the_standard_landmarks(brainlike):
    image, mask = brainlike
    scanner_b = image * 1.7 + 40  # the same anatomy on a "different scanner"
    landmarks = normalization.nyul_landmarks([image, scanner_b ** 1.1], [mask, mask])
    assert landmarks[0] == 0 and landmarks[-1] == 100 and np.all(np.diff(landmarks) > 0)
    out_a = normalization.normalize_nyul(image, mask=mask, landmarks=landmarks)
    out_b = normalization.normalize_nyul(scanner_b, mask=mask, landmarks=landmarks)
    inside = mask > 0
    np.testing.assert_allclose(np.percentile(out_a[inside], normalization._NYUL_PERCENTILES), landmarks, atol=1e-3)
    np.testing.assert_allclose(out_a[inside], out_b[inside], atol=1e-2)  # linear scanner change removed


def test_normalize_errors(brainlike):
    image, mask = brainlike
    with pytest.raises(MSToolkitInputError, match="unknown normalisation 'minmax'; allowed: zscore, percentile, nyul"):
        normalization.normalize(image, method="minmax")
    with pytest.raises(MSToolkitInputError, match="'mask' is empty"):
        normalization.normalize_zscore(image, mask=np.zeros_like(mask))
    with pytest.raises(MSToolkitInputError, match="constant inside the mask"):
        normalization.normalize_zscore(np.ones(image.shape), mask=mask)
    with pytest.raises(MSToolkitInputError, match="needs 'landmarks'"):
        normalization.normalize(image, method="nyul", mask=mask)
    with pytest.raises(MSToolkitInputError, match="must be 11 increasing values"):
        normalization.normalize_nyul(image, mask=mask, landmarks=[0, 1, 2])
    with pytest.raises(MSToolkitInputError, match="all zeros"):
        normalization.normalize_percentile(np.zeros((7, 8, 9)))
