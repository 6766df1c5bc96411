"""`diffedit bench outline`: the fit, the ring count, and the rows on the embedded model."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from diffedit.bench.outline import drawn_object, fit_object, format_outline, ring_pixels, run_outline
from diffedit.cli.bench import bench_app
from diffedit.shapeworld.world import ShapeObject, render_background


def _draw(obj: ShapeObject, background: str = "striped") -> np.ndarray:
    image = render_background(background)
    image[obj.mask()] = obj.rgb
    return image


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_fit_finds_the_drawn_object_and_an_exact_drawing_has_no_ring(shape):
    obj = ShapeObject("green", shape, 37, 60, 70)
    image = _draw(obj)
    drawn = drawn_object(image, obj.rgb, render_background("striped"))
    assert (drawn == obj.mask()).all()
    assert (fit_object(drawn, "green", shape).mask() == obj.mask()).all()  # (sizes s and s + 1 can draw alike)
    assert ring_pixels(image, obj.mask(), obj.rgb, render_background("striped")) == 0


def test_a_shape_drawn_one_pixel_large_all_round_fills_the_ring():
    """What the ghost rule sees of a square drawn over a circle a pixel too wide: the whole ring, far over 24."""
    truth = ShapeObject("red", "square", 34, 64, 64)
    large = ShapeObject("red", "square", 36, 64, 64)
    background = render_background("gray")
    ring = ring_pixels(_draw(large, "gray"), truth.mask(), truth.rgb, background)
    assert ring == 4 * 34  # every ring pixel (the one-pixel disk misses the four diagonal corners)
    # a pixel small instead: the ring stays background, the shortfall is outline error, not ring
    small = ShapeObject("red", "square", 32, 64, 64)
    assert ring_pixels(_draw(small, "gray"), truth.mask(), truth.rgb, background) == 0
    # a stray speck apart from the object does not move the fit
    speckled = _draw(large, "gray")
    speckled[5:8, 5:8] = truth.rgb
    assert (fit_object(drawn_object(speckled, truth.rgb, background), "red", "square").mask() == large.mask()).all()


def test_nothing_drawn_fits_nothing():
    assert fit_object(np.zeros((128, 128), bool), "red", "circle") is None


def test_outline_rows_on_the_embedded_model(tmp_path):
    from diffedit import DiffEditor

    editor = DiffEditor.from_pretrained(progress=False)
    report = run_outline(images=3, seed=5, steps=4, batch_size=2, json_path=tmp_path / "o.json", progress=False,
                         editor=editor)
    assert set(report["rows"]) == {"vae", "generated", "redrawn"}  # the embedded model ships an inpainter
    assert all(r["images"] == 3 for r in report["rows"].values())
    assert "ring_free_truth" not in report["rows"]["generated"]  # it draws where it likes: no truth to hold it to
    vae = report["rows"]["vae"]
    assert vae["ring_free_truth"] == 1.0 and vae["median_error_truth"] < 40  # the VAE keeps a shape to the pixel
    assert json.loads((tmp_path / "o.json").read_text()) == report
    lines = format_outline(report).splitlines()
    assert len(lines) == 5 and lines[2].split(" | ")[:1] + lines[2].split(" | ")[4:5] == ["vae", "100.0 %"]


def test_cli_outline_checks_its_counts_before_loading():
    result = CliRunner().invoke(bench_app, ["outline", "--images", "0"])
    assert result.exit_code == 2 and "--images" in result.output
