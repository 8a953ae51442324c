"""PixelCNN models from Python against the arq CLI: the same samples for the same seed,
per-image scores bit for bit, the same imputations; numpy shapes and dtypes."""

import json

import numpy as np
import pytest
from PIL import Image

import arq
from conftest import DIGITS_Q8, DIGITS_TEST, cli, cli_json


@pytest.fixture(scope="module")
def digits():
    return arq.Model(DIGITS_Q8, threads=2)


def test_model_reports_its_kind_and_config(digits):
    assert digits.kind == "pixel"
    c = digits.config
    assert (c["height"], c["width"], c["levels"]) == (8, 8, 17)


def test_sample_equals_the_cli_for_the_same_seed(digits, tmp_path):
    imgs = digits.sample(16, seed=3)
    assert imgs.dtype == np.uint8 and imgs.shape == (16, 8, 8)
    assert imgs.flags["C_CONTIGUOUS"]
    cli("sample", DIGITS_Q8, "-n", 16, "--seed", 3, "-o", tmp_path / "grid.png", "--npy", tmp_path / "s.npy")
    assert np.array_equal(imgs, np.load(tmp_path / "s.npy"))
    # Image i uses seed + i: the fifth image alone from seed 7.
    assert np.array_equal(digits.sample(1, seed=7)[0], imgs[4])
    assert np.array_equal(digits.sample(4, seed=3, temperature=0.0)[0], digits.sample(1, seed=99, temperature=0.0)[0])


def test_score_equals_the_cli_bit_for_bit(digits):
    x = np.load(DIGITS_TEST)
    nll = digits.score(x)
    want = cli_json("score", DIGITS_Q8, DIGITS_TEST, "--per-image", "--threads", "2")
    assert nll.dtype == np.float64 and nll.shape == (x.shape[0],) == (want["images"],)
    assert nll.tolist() == want["per_image"]
    # (N, H, W, 1) and non-contiguous views are read in their logical order.
    assert np.array_equal(digits.score(x[..., None]), nll)
    assert np.array_equal(digits.score(x[::-1]), nll[::-1])
    assert np.array_equal(digits.score(np.asfortranarray(x)), nll)


def gray_png(path, levels_img, levels):
    """Writes levels as an 8-bit grey PNG the way the CLI maps them (levels -> grey)."""
    top = levels - 1
    gray = ((2 * levels_img.astype(np.uint32) * 255 + top) // (2 * top)).astype(np.uint8)
    Image.fromarray(gray).save(path)


@pytest.mark.parametrize("rows, particles, method", [
    (slice(4, 8), 64, "exact"),   # the bottom half missing: observed pixels all come first
    (slice(0, 4), 16, "smc"),     # the top half missing: sequential Monte Carlo
])
def test_impute_equals_the_cli(digits, tmp_path, rows, particles, method):
    image = np.load(DIGITS_TEST)[5]
    mask = np.zeros((8, 8), dtype=bool)
    mask[rows] = True
    filled, info = digits.impute(image, mask, particles=particles, seed=1)
    assert filled.dtype == np.uint8 and filled.shape == (8, 8)
    assert info["method"] == method and info["missing_pixels"] == 32
    assert np.array_equal(filled[~mask], image[~mask])
    gray_png(tmp_path / "image.png", image, 17)
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    out = json.loads(cli("impute", DIGITS_Q8, "--image", tmp_path / "image.png", "--mask", tmp_path / "mask.png",
                         "-o", tmp_path / "out.png", "--particles", particles, "--seed", 1, "--json").stdout)
    assert out["method"] == method
    if method == "smc":
        assert (info["particles"], info["resamples"], info["ess"]) == (out["particles"], out["resamples"], out["ess"])
    want_gray = np.asarray(Image.open(tmp_path / "out.png"))
    gray_png(tmp_path / "mine.png", filled, 17)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mine.png")), want_gray)


def test_bad_images_raise_one_line_errors(digits):
    x = np.load(DIGITS_TEST)
    with pytest.raises(arq.BadArgumentError, match="uint8"):
        digits.score(x.astype(np.float32))
    with pytest.raises(arq.BadArgumentError, match=r"shape \[8, 8\]"):
        digits.score(x[0])
    with pytest.raises(arq.BadArgumentError, match="takes 8x8"):
        digits.score(np.zeros((2, 7, 8), dtype=np.uint8))
    bad = x[:3].copy()
    bad[2, 1, 4] = 17
    with pytest.raises(arq.BadArgumentError, match=r"image 2, pixel \(1, 4\) has value 17"):
        digits.score(bad)
    with pytest.raises(arq.BadArgumentError, match="mask must be a numpy bool array"):
        digits.impute(x[0], np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(arq.BadArgumentError, match="particles"):
        digits.impute(x[0], np.ones((8, 8), dtype=bool), particles=0)
    for n in (0, 5000):
        with pytest.raises(arq.BadArgumentError, match="n must be"):
            digits.sample(n)
    with pytest.raises(arq.BadArgumentError, match="temperature"):
        digits.sample(1, temperature=float("nan"))
    with pytest.raises(arq.BadArgumentError, match="is a PixelCNN image model"):
        digits.generate("hi")
    with pytest.raises(arq.BadArgumentError, match="apply to text models"):
        digits.score(x, per_token=True)
