import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from sam_edit.errors import ImageError
from sam_edit.images import (
    image_to_tensor, load_image, load_mask, read_png_settings, save_png, tensor_to_image, working_size,
)


@pytest.fixture
def coffee():
    return Image.fromarray(skimage.data.coffee())  # 600x400 RGB


def save(image, tmp_path, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGB"])
def test_modes_become_rgb(coffee, tmp_path, mode):
    suffix = "jpg" if mode == "CMYK" else "png"
    loaded = load_image(save(coffee.convert(mode), tmp_path, f"image.{suffix}"))
    assert loaded.image.mode == "RGB"
    assert loaded.size == (600, 400)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    loaded = load_image(save(image, tmp_path, "deep.png"))
    assert np.asarray(loaded.image)[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_composited_over_white_with_notice(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    loaded = load_image(save(rgba, tmp_path, "alpha.png"))
    pixels = np.asarray(loaded.image)
    assert pixels[0, 0].tolist() == [0, 0, 255]
    assert pixels[1, 1].tolist() == [255, 255, 255]
    assert any("composited" in notice for notice in loaded.notices)


def test_opaque_alpha_gives_no_notice(coffee, tmp_path):
    loaded = load_image(save(coffee.convert("RGBA"), tmp_path, "opaque.png"))
    assert loaded.notices == ()


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = save(image, tmp_path, "palette.png", transparency=0)
    pixels = np.asarray(load_image(path).image)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [10, 20, 30]


def test_exif_orientation_applied(coffee, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_image(save(coffee, tmp_path, "rotated.jpg", exif=exif))
    assert loaded.size == (400, 600)


def test_unreadable_and_missing_files(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(broken)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "absent.png")


def test_sha256_is_of_file_bytes(chelsea_path):
    import hashlib

    assert load_image(chelsea_path).sha256 == hashlib.sha256(chelsea_path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "size, max_side, expected",
    [((451, 300), 512, (512, 344)), ((512, 512), 512, (512, 512)), ((640, 427), 512, (512, 344)),
     ((300, 451), 256, (168, 256)), ((4000, 3000), 512, (512, 384)), ((100, 2), 64, (64, 8))],
)
def test_working_size(size, max_side, expected):
    width, height = working_size(size, max_side)
    assert (width, height) == expected
    assert width % 8 == 0 and height % 8 == 0
    assert max(width, height) == max_side


def test_working_size_rejects_bad_max_side():
    with pytest.raises(ImageError, match="--max-side"):
        working_size((100, 100), 100)


def test_tensor_round_trip(coffee):
    tensor = image_to_tensor(coffee, (600, 400))
    assert tensor.shape == (1, 3, 400, 600)
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), np.asarray(coffee))


def test_nan_pixels_are_never_saved():
    with pytest.raises(ImageError, match="NaN"):
        tensor_to_image(torch.full((1, 3, 8, 8), float("nan")))


def test_png_carries_settings(coffee, tmp_path):
    settings = {"method": "residual", "target_prompt": "a tiger", "seed": 1, "size": [600, 400]}
    path = tmp_path / "out.png"
    save_png(coffee, path, settings)
    assert read_png_settings(path) == settings
    with Image.open(path) as saved:
        assert saved.text["parameters"].startswith("a tiger\n")
        assert "Seed: 1" in saved.text["parameters"]
        assert json.loads(saved.text["samedit"])["method"] == "residual"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_png_without_settings(coffee, tmp_path):
    with pytest.raises(ImageError, match="no samedit settings"):
        read_png_settings(save(coffee, tmp_path, "plain.png"))


def test_mask_must_match_image_size(tmp_path):
    mask = Image.new("L", (10, 10), 255)
    path = save(mask, tmp_path, "mask.png")
    assert load_mask(path, (10, 10)).all()
    with pytest.raises(ImageError, match="give a mask of the image's size"):
        load_mask(path, (20, 10))


def test_decompression_bomb_is_one_error(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(path)  # 200 million pixels in a few kilobytes

    with pytest.raises(ImageError, match="downscale it first"):
        load_image(path)


def test_animation_edits_first_frame_with_notice(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 12), colour) for colour in ("red", "green", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])

    loaded = load_image(path)

    assert loaded.image.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.notices == ("has 3 frames; only the first is edited",)


def test_photo_given_as_mask_warns(chelsea_path, caplog):
    mask = load_mask(chelsea_path, (451, 300))

    assert mask.shape == (300, 451)
    assert "grey pixels" in caplog.text


def test_black_and_white_mask_gives_no_warning(tmp_path, caplog):
    path = tmp_path / "mask.png"
    array = np.zeros((30, 40), dtype=np.uint8)
    array[5:20, 10:30] = 255
    Image.fromarray(array).save(path)

    assert load_mask(path, (40, 30)).sum() == 15 * 20
    assert "grey pixels" not in caplog.text
