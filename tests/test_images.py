"""Reading images safely: EXIF orientation, modes, sizes; padding; atomic saves."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.images import (
    from_uint8, load_image, load_mask, pad_to_multiple, pil_to_tensor, save_image, save_json, tensor_to_pil, to_uint8,
)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left strip is now on top


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "P", "I;16", "1", "F"])
def test_modes_become_8bit_rgb(tmp_path, mode):
    base = Image.new("RGB", (24, 24), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((24, 24), 65535 // 2, np.uint16))
    elif mode == "F":
        img = Image.fromarray(np.full((24, 24), 0.5, np.float32))
    else:
        img = base.convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (24, 24)
    if mode == "I;16":
        assert abs(int(np.asarray(out)[0, 0, 0]) - 128) <= 1
    if mode == "F":
        assert abs(int(np.asarray(out)[0, 0, 0]) - 128) <= 1


def test_ycbcr_tiff_files_keep_their_colours(tmp_path):
    """PIL writes a YCbCr image to TIFF uncompressed; PIL 12 opened such a file as RGB of 4 bytes a pixel and failed
    ("image file is truncated"): every compression PIL writes reads back in its colours."""
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[:, :12] = (200, 40, 30)
    rgb[:, 12:] = (20, 60, 210)
    for compression in (None, "tiff_lzw", "packbits"):
        path = tmp_path / f"ycc-{compression}.tif"
        Image.fromarray(rgb).convert("YCbCr").save(path, compression=compression)
        out = load_image(path)
        assert out.size == (24, 20) and np.abs(np.asarray(out).astype(int) - rgb).max() <= 3, compression


def test_transparency_is_composited_over_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:10, :, 3] = 255  # top opaque red, bottom fully transparent
    out = np.asarray(load_image(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[15, 0]) == (255, 255, 255)


def test_size_limits(tmp_path):
    with pytest.raises(ValueError, match="above the limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
    with pytest.raises(ValueError, match="at least 16"):
        load_image(np.zeros((10, 100, 3), np.uint8))
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "trunc.png")


def test_pad_to_multiple_keeps_content_and_reaches_the_grid():
    x = torch.arange(2 * 3 * 17 * 21, dtype=torch.float32).reshape(2, 3, 17, 21)
    p = pad_to_multiple(x, 8)
    assert p.shape == (2, 3, 24, 24) and torch.equal(p[:, :, :17, :21], x)
    assert pad_to_multiple(p, 8) is p


def test_user_mask_reading(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png", (30, 20)), m > 0)
    with pytest.raises(ValueError, match="mask is 30x20"):
        load_mask(tmp_path / "m.png", (20, 20))


def test_atomic_saves_leave_no_partial_files(tmp_path):
    save_image(Image.new("RGB", (16, 16)), tmp_path / "a.png")
    save_json({"x": 1}, tmp_path / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]
    with pytest.raises(ValueError, match="unknown image format"):
        save_image(Image.new("RGB", (16, 16)), tmp_path / "a.unknown")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]


def test_uint8_conversions_round_trip_and_clamp():
    x = torch.tensor([-3.0, -1.0, -0.0039, 0.0, 0.0039, 0.5, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 127, 128, 128, 191, 255, 255]  # (x + 1) * 127.5, nearest, clamped
    assert to_uint8(x.half()).dtype == torch.uint8
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(u8)), u8) and from_uint8(u8.numpy()).dtype == torch.float32
    assert from_uint8(u8).min() == -1.0 and from_uint8(u8).max() == 1.0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    pixels = pil_to_tensor([image])
    assert pixels.shape == (1, 3, 5, 7) and np.array_equal(np.asarray(tensor_to_pil(pixels)[0]), np.asarray(image))
