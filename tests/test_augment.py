"""Training augmentation: zoom-out puts the product small in the frame (issue #10, the
small-in-frame robustness case)."""
import numpy as np

from skulens.training.augment import AugmentConfig, augment, geometric


def _runs(row: np.ndarray) -> list[int]:
    edges = np.flatnonzero(np.diff(row.astype(int)) != 0)
    return np.diff(edges).tolist()


def test_zoom_out_shrinks_the_photo_in_the_frame():
    cells = np.tile(((np.arange(64) // 8) % 2 * 255).astype(np.uint8), (64, 1))  # vertical stripes, 8 px
    still = AugmentConfig.none()
    zoom = AugmentConfig(zoom_out_p=1.0, zoom_out=(2.5, 2.5), rotation=0.0, perspective=0.0, hflip=False,
                         brightness=0.0, contrast=0.0, gamma=(1.0, 1.0), saturation=0.0, white_balance=0.0,
                         blur_p=0.0, noise_p=0.0, jpeg_p=0.0)
    rng = np.random.default_rng(0)
    plain = geometric(cells, (64, 64), still, rng)
    assert np.median(_runs(plain[32])) == 8
    for _ in range(5):
        out = geometric(cells, (64, 64), zoom, rng)
        stripes = _runs(out[32])
        # the photo's 8 px stripes now span 8 / sqrt(2.5) ~ 5 px of the frame
        assert 4 <= np.median([r for r in stripes if r > 1]) <= 6


def test_zoom_out_is_seeded_and_off_in_none():
    photo = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    a = augment(photo, (32, 32), AugmentConfig(), np.random.default_rng(5))
    b = augment(photo, (32, 32), AugmentConfig(), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert AugmentConfig.none().zoom_out_p == 0.0
