import numpy as np

from intrakd_jax.evaluation import visualize


def test_colorize_maps_classes_and_ignore():
    label = np.array([[0, 1, 2], [255, 4, 7]])
    rgb = visualize.colorize(label, num_classes=5)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], visualize.IGNORE_RGB)
    np.testing.assert_array_equal(rgb[1, 2], visualize.IGNORE_RGB)  # 7 is not a class
    assert len({tuple(c) for c in visualize.palette(5)}) == 5
    assert len(visualize.palette(40)) == 40


def test_overlay_keeps_background_pixels():
    img = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [0, 0]])
    out = visualize.overlay(img, label, 5, alpha=1.0)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 1], visualize.palette(5)[1])


def test_denormalize_inverts_normalisation():
    mean, std = (123.68, 116.779, 103.939), (1.0, 2.0, 1.0)
    raw = np.array([[[10.0, 200.0, 255.0]]])
    norm = (raw - np.array(mean)) / np.array(std)
    np.testing.assert_array_equal(visualize.denormalize(norm, mean, std), raw.astype(np.uint8))


def test_grid_layout(tmp_path):
    tiles = [[np.zeros((4, 6, 3), np.uint8)] * 3] * 2
    g = visualize.grid(tiles, ["a", "b", "c"], pad=2)
    assert g.shape == (22 + 2 * 6, 3 * 8, 3)
    visualize.save_png(str(tmp_path / "g.png"), g)
    assert (tmp_path / "g.png").stat().st_size > 0
