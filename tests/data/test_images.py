"""Every bad-input case gives an ImageError naming the file and the problem; odd modes convert."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermalab.core.errors import ImageError
from dermalab.data.images import load_resized, open_rgb, resize_rgb


def _jpeg_bytes(size=(64, 48), colour=(180, 90, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _expect(path: Path, fragment: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        open_rgb(path)
    assert info.value.path == str(path)
    assert fragment in info.value.reason
    assert str(path) in str(info.value)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.jpg", "file not found")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _expect(p, "empty file")


def test_non_image_with_image_extension(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is a text file, not a photo\n" * 20)
    _expect(p, "not an image")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes((256, 256))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    _expect(p, "truncated or corrupt")


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    data = bytearray(_jpeg_bytes((128, 128)))
    # Keep the header (so the format is recognised), destroy the entropy-coded data and EOI.
    body = len(data) // 3
    data[body:] = b"\x00" * (len(data) - body)
    p = tmp_path / "corrupt.jpg"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError) as info:
        open_rgb(p)
    assert info.value.path == str(p)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    d = tmp_path / "folder.jpg"
    d.mkdir()
    _expect(d, "directory")


def test_decompression_bomb(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(p)  # 72 Mpx, a few kB on disk
    assert p.stat().st_size < 100_000
    _expect(p, "decompression bomb")


def test_bomb_limit_is_configurable(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(p)
    with pytest.raises(ImageError, match="above the limit"):
        open_rgb(p, max_pixels=5000)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "YCbCr", "LA", "RGBA", "1", "I;16"])
def test_modes_convert_to_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
        ext = "png"
    else:
        img = base.convert(mode)
        ext = {"CMYK": "jpg", "YCbCr": "jpg"}.get(mode, "png")
    p = tmp_path / f"img_{mode.replace(';', '')}.{ext}"
    img.save(p)
    out = open_rgb(p)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_16bit_grey_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = np.zeros((4, 8), dtype=np.uint16)
    arr[:, 4:] = 32896  # mid-grey in 16 bits
    p = tmp_path / "grey16.png"
    Image.fromarray(arr).save(p)
    out = np.asarray(open_rgb(p))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 7].tolist() == [128, 128, 128]  # 32896 / 257 = 128, not clipped to 255


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    p = tmp_path / "alpha.png"
    img.save(p)
    assert np.asarray(open_rgb(p))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_colour_is_preserved(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (200, 40, 40)).convert("CMYK").save(p, quality=95)
    r, g, b = np.asarray(open_rgb(p))[8, 8].tolist()
    assert r > 150 and g < 90 and b < 90  # still red


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, with EXIF orientation 6 ("rotate 90 CW to view"): upright is
    # 20 wide x 40 high.
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif, quality=95)
    out = open_rgb(p)
    assert out.size == (20, 40)
    arr = np.asarray(out)
    assert arr[2, 10].mean() > 200  # the band is now at the top
    assert arr[-3, 10].mean() < 60


def test_bytes_source_and_draft(tmp_path: Path) -> None:
    out = load_resized(_jpeg_bytes((400, 300)), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_resize_modes_give_square(mode: str) -> None:
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    out = resize_rgb(img, 50, mode)
    assert out.size == (50, 50)
    arr = np.asarray(out)
    if mode == "pad":
        assert arr[0, 25].tolist() == [0, 0, 0]  # padding above the wide image
    else:
        assert arr[0, 25, 0] > 200


def test_error_kinds_classify_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "t.jpg"
    text.write_text("hello" * 50)
    bomb = tmp_path / "b.png"
    Image.new("1", (9000, 8000)).save(bomb)
    cut = tmp_path / "c.jpg"
    data = _jpeg_bytes((256, 256))
    cut.write_bytes(data[: len(data) // 2])
    for path, kind in [(tmp_path / "missing.jpg", "unreadable"), (empty, "not_image"),
                       (text, "not_image"), (bomb, "too_large"), (cut, "corrupt")]:
        with pytest.raises(ImageError) as info:
            open_rgb(path)
        assert info.value.kind == kind, path
