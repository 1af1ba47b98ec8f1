"""Subject photos: odd-but-valid images are normalised; invalid ones are one-line errors."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from subjectgen.errors import UserError
from subjectgen.photos import open_photo
from subjectgen.subjects import load_subject, rare_token, strip_identifier
from subjectgen.tiny import clip_tokenizer


def save(path, image, **kw):
    image.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), "white")
    image.paste((255, 0, 0), (0, 0, 5, 10))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = save(tmp_path / "o.jpg", image, exif=exif.tobytes(), quality=95)
    out = open_photo(path)
    assert out.size == (10, 20)
    r, g, b = out.getpixel((5, 1))  # the left strip is now at the top
    assert r > 200 and g < 60


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "RGBA", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
        suffix = ".png"
    else:
        image = Image.new("RGB", (8, 8), (10, 120, 200)).convert(mode)
        suffix = ".tif" if mode == "CMYK" else ".png"
    out = open_photo(save(tmp_path / f"x{suffix}", image))
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # 16-bit full scale -> 8-bit full scale


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    out = open_photo(save(tmp_path / "t.png", image))
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_wrong_extension_is_read_by_content(tmp_path):
    path = tmp_path / "actually_png.jpg"
    Image.new("RGB", (6, 6), (0, 255, 0)).save(path, format="PNG")
    assert open_photo(path).getpixel((2, 2)) == (0, 255, 0)


def test_load_subject_resizes_and_center_crops(subject_dir):
    subject = load_subject(subject_dir, "dog", 16)
    assert len(subject.images) == 3 and all(im.size == (16, 16) for im in subject.images)
    tensor = subject.tensor()
    assert tensor.shape == (3, 3, 16, 16) and -1 <= tensor.min() and tensor.max() <= 1


def bad_files(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "text.jpg").write_text("not an image")
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    # a PNG header claiming 20000x20000 pixels: a decompression bomb
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(header + b"\0" * 4)
    return ["empty.png", "truncated.png", "text.jpg", "anim.gif", "bomb.png"]


def test_invalid_images_are_one_line_errors_naming_the_file(tmp_path):
    for name in bad_files(tmp_path):
        with pytest.raises(UserError) as err:
            open_photo(tmp_path / name)
        message = str(err.value)
        assert name in message and "\n" not in message


def test_empty_folder_and_missing_class(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        load_subject(tmp_path, "dog", 16)
    with pytest.raises(UserError, match="--class"):
        load_subject(tmp_path, "", 16)


def test_rare_token_is_a_single_meaningless_token():
    tokenizer = clip_tokenizer()
    token = rare_token(tokenizer, avoid={"dog"})
    assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1
    assert len(token) == 3 and not set(token) & set("aeiouy")
    assert tokenizer.get_vocab()[token + "</w>"] > 0.8 * len(tokenizer)
    assert rare_token(tokenizer, avoid={token}) != token


def test_strip_identifier():
    assert strip_identifier("a sks dog on the beach", "sks") == "a dog on the beach"


def masked_folder(tmp_path, mask_files: dict, photo_mode="RGB"):
    """Two 40x32 photos; masks/ holds the given {name: image} files."""
    for name in ("a", "b"):
        Image.new(photo_mode, (40, 32), (200, 30, 30) + ((255,) if photo_mode == "RGBA" else ())).save(
            tmp_path / f"{name}.png")
    (tmp_path / "masks").mkdir(exist_ok=True)
    for name, image in mask_files.items():
        image.save(tmp_path / "masks" / name)
    return tmp_path


def left_half_mask():
    mask = Image.new("L", (40, 32), 0)
    mask.paste(255, (0, 0, 20, 32))
    return mask


def test_masks_come_from_the_masks_folder_and_are_cropped_like_the_photos(tmp_path):
    folder = masked_folder(tmp_path, {"a.png": left_half_mask(), "b.jpg": Image.new("L", (40, 32), 255)})
    subject = load_subject(folder, "dog", 16, masks=True)
    assert len(subject.images) == 2  # the masks/ folder is not read as a photo
    masks = subject.mask_tensor()
    assert masks.shape == (2, 1, 16, 16) and 0 <= masks.min() and masks.max() <= 1
    # centre crop of 40x32 cuts 4 px per side: the left-half mask covers 16 of the 32 kept columns
    assert masks[0, 0, :, :7].min() > 0.95 and masks[0, 0, :, 9:].max() < 0.05
    assert masks[1].min() > 0.95
    assert load_subject(folder, "dog", 16).masks is None


def test_mask_from_the_alpha_channel(tmp_path):
    photo = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # the smallest photo accepted (photos.MIN_SIDE)
    photo.paste((10, 200, 10, 255), (0, 0, 16, 32))
    photo.save(tmp_path / "cutout.png")
    mask = load_subject(tmp_path, "dog", 32, masks=True).mask_tensor()[0, 0]
    assert mask[:, :16].min() == 1 and mask[:, 16:].max() == 0


def test_mask_errors_are_one_line_and_name_the_file(tmp_path):
    folder = masked_folder(tmp_path, {"a.png": left_half_mask()})
    with pytest.raises(UserError, match=r"b\.png has no mask.*masks/b\.png") as err:
        load_subject(folder, "dog", 16, masks=True)
    assert "\n" not in str(err.value)
    Image.new("L", (20, 20), 255).save(folder / "masks" / "b.png")
    with pytest.raises(UserError, match=r"b\.png is 20x20 but its photo is 40x32"):
        load_subject(folder, "dog", 16, masks=True)
    Image.new("L", (40, 32), 0).save(folder / "masks" / "b.png")
    with pytest.raises(UserError, match="all black"):
        load_subject(folder, "dog", 16, masks=True)
    (folder / "masks" / "b.png").write_text("not an image")
    with pytest.raises(UserError, match=r"b\.png is not an image"):
        load_subject(folder, "dog", 16, masks=True)
