"""A subject's photos on disk: which files are photos, reading them (one-line errors for bad files), their masks.

Only Pillow and numpy, so the command line checks a subject folder before torch is imported.
"""

from __future__ import annotations

import functools
import glob
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif"}
HEIF_SUFFIXES = {".heic", ".heif"}  # read when the pillow-heif plugin is installed, refused by name otherwise
MIN_SIDE = 32            # px on the short side: below it a photo holds too little of the subject to learn from
MANY_PHOTOS = 10         # the methods are made for 3-5 photos; more is allowed, with a warning
MAX_PIXELS = 64_000_000  # larger than any photo a user would give; bigger ones are decompression bombs
MASK_FOLDER = "masks"    # SUBJECT/masks/NAME.png: white where photo NAME shows the subject (kohya's mask images)


def check_subject_folder(folder: Path, class_noun: str, uses: int | None = None) -> tuple[list[Path], list[Image.Image]]:
    """The folder's photo paths and the photos as RGB, validated: a one-line error for a missing class, folder or
    photo, and for a photo too small to learn from; a warning for more photos than the methods are made for, or
    than the method uses (`uses`: it takes the first ones; None: all)."""
    folder = Path(folder)
    if not class_noun or not class_noun.strip():
        raise UserError("the subject's class is missing; pass --class, e.g. --class dog")
    if not folder.is_dir():
        raise UserError(f"subject folder {folder} does not exist; give a folder of photos of your subject")
    paths = photo_paths(folder, warn=True)
    if not paths:
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        seen = f"; it has only {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}" if others else ""
        raise UserError(f"subject folder {folder} holds no images ({', '.join(sorted(readable_suffixes()))}){seen}; "
                        "add 1-5 photos of the subject")
    if len(paths) > (uses or MANY_PHOTOS):
        used = "all are used" if uses is None else \
            f"this method uses the first {uses}: {', '.join(p.name for p in paths[:uses])}"
        warnings.warn(f"subject folder {folder} holds {len(paths)} photos; the methods are made for 3-5 ({used})",
                      stacklevel=3)
    photos = [open_photo(p) for p in paths]
    for path, photo in zip(paths, photos):
        if min(photo.size) < MIN_SIDE:
            raise UserError(f"{path} is {photo.width}x{photo.height} px; a photo needs at least {MIN_SIDE} px on its "
                            "short side; replace it with a larger photo or remove it")
    return paths, photos


def read_captions(paths: list[Path]) -> list[str | None]:
    """Each photo's caption: NAME.txt beside it (kohya's convention), with {subject} where the identifier goes
    ("a {subject} on a tiled floor"); None where a photo has none. A one-line error for a caption file that is
    not UTF-8 text or does not say where the subject goes."""
    captions = []
    for path in paths:
        text_file = path.with_suffix(".txt")
        if not text_file.is_file():
            captions.append(None)
            continue
        try:
            text = " ".join(text_file.read_text(encoding="utf-8").split())
        except UnicodeDecodeError:
            raise UserError(f"caption {text_file} is not UTF-8 text; save it as UTF-8 or remove it") from None
        if "{subject}" not in text:
            raise UserError(f"caption {text_file} has no {{subject}}; write where the subject goes, e.g. "
                            "'a {subject} on a tiled floor'")
        captions.append(text)
    return captions


def warn_if_scaled_down(folder: Path, photos: list[Image.Image], resolution: int, model: str) -> None:
    """Say so when the photos are far larger than the model sees them, and, on the built-in model, that a
    real photo is outside the emoji world it knows."""
    side = max(min(photo.size) for photo in photos)
    if side < max(4 * resolution, 256):  # real photos (256 px and up) on a model that sees a quarter of them or less
        return
    text = f"the photos in {folder} are up to {side} px and are scaled down to {resolution} px for this model"
    if model == "builtin":
        text += ("; the built-in model knows a small emoji world: for your own photos use a Stable Diffusion model, "
                 "e.g. --model stable-diffusion-v1-5/stable-diffusion-v1-5")
    warnings.warn(text, stacklevel=3)


def readable_suffixes() -> set[str]:
    """The photo suffixes this Pillow reads (HEIC/HEIF only with the pillow-heif plugin)."""
    return IMAGE_SUFFIXES | (HEIF_SUFFIXES if heif_plugin() else set())


@functools.lru_cache(maxsize=None)
def heif_plugin() -> bool:
    """Whether pillow-heif is installed (registered with Pillow once, on first use)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def photo_paths(folder: Path, warn: bool = False) -> list[Path]:
    """The subject's photos in a folder, sorted: image files only, not hidden ones, not masks/. A HEIC photo
    without the plugin to read it is a one-line error; with `warn`, every other file left out is named."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    suffixes = readable_suffixes()
    for p in files:
        if p.suffix.lower() in HEIF_SUFFIXES - suffixes:
            raise UserError(f"{p} is a HEIC/HEIF photo, which needs a plugin: pip install pillow-heif, or convert "
                            "it to JPEG or PNG")
    chosen = [p for p in files if p.suffix.lower() in suffixes]
    if warn and chosen:  # with no photo at all, the caller's error names the folder instead
        captions = {p.with_suffix(".txt") for p in chosen}  # a photo's caption (read_captions) is not skipped
        for p in files:
            if p.suffix.lower() not in suffixes and p not in captions:
                warnings.warn(f"skipping {p}: not a photo ({', '.join(sorted(suffixes))})", stacklevel=3)
    return chosen


def mask_files(photo: Path) -> list[Path]:
    """The mask files of one photo: masks/<name>.<image suffix> beside it."""
    return sorted(p for p in (photo.parent / MASK_FOLDER).glob(f"{glob.escape(photo.stem)}.*")
                  if p.suffix.lower() in readable_suffixes())


def masks_beside(folder: str | Path | None) -> bool:
    """Whether every photo in the folder has a usable subject mask: what a default masked loss needs."""
    if folder is None or not Path(folder).is_dir():
        return False
    photos = photo_paths(Path(folder))
    return bool(photos) and all(has_mask(p) for p in photos)


def has_mask(photo: Path) -> bool:
    """Whether the photo has a usable subject mask (open_mask would read it): what a default masked loss needs."""
    try:
        with Image.open(photo) as image:
            size = image.size
        open_mask(photo, size)
    except (OSError, UnidentifiedImageError, UserError):  # reading the subject says what is wrong with the photo
        return False
    return True


def open_mask(photo: Path, photo_size: tuple[int, int]) -> Image.Image:
    """The subject mask of one photo: masks/<name>.<image suffix> beside it, else the photo's alpha channel."""
    files = mask_files(photo)
    source = files[0] if files else photo
    image = read_image(source)
    if files:
        mask = image.convert("L")
    elif "A" in image.getbands() or "transparency" in image.info:
        mask = image.convert("RGBA").getchannel("A")
    else:
        raise UserError(f"{photo} has no mask for --masked-loss; add {photo.parent / MASK_FOLDER / photo.stem}.png "
                        "(white on the subject) or give the photo a transparent background")
    if mask.size != photo_size:
        raise UserError(f"mask {source} is {mask.width}x{mask.height} but its photo is {photo_size[0]}x{photo_size[1]}; "
                        "make them the same size")
    if mask.getextrema()[1] == 0:
        raise UserError(f"mask {source} is all black (no subject); paint the subject white")
    return mask


def open_photo(path: Path) -> Image.Image:
    """Open one photo as RGB, whatever its mode or orientation; a bad file is a one-line UserError."""
    return to_rgb(read_image(path))


def read_image(path: Path) -> Image.Image:
    """One still image, loaded and upright (EXIF orientation applied), in its own mode; a bad file is a
    one-line UserError."""
    if not Path(path).is_file():
        raise UserError(f"{path} is missing; restore it, or remove it from the folder's list")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes); remove it or replace it with a photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            image = Image.open(path)
            if getattr(image, "n_frames", 1) > 1:
                raise UserError(f"{path} is animated ({image.n_frames} frames); give a still photo")
            image.load()
    except UserError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UserError(f"{path} is too large (over {MAX_PIXELS:,} pixels); downsize it first") from None
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image Pillow can read; remove it from the subject folder") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is damaged or truncated ({exc}); re-export or remove it") from None
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit scaled down, CMYK converted, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size`, then cut the centre square."""
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """Aspect-ratio buckets (kohya's and SimpleTuner's convention): (width, height) pairs, multiples of `step`, with
    about the pixels of a `resolution` square and sides from half to twice `resolution`."""
    sizes = set()
    for width in range(step, 2 * resolution + 1, step):
        height = min(2 * resolution, resolution * resolution // width // step * step)
        if resolution // 2 <= height and resolution // 2 <= width:
            sizes.add((width, height))
    return sorted(sizes)


def bucket_of(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest a photo's (width, height) (by log ratio: 2:1 as far as 1:2)."""
    import math

    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def fit(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover the bucket, then cut its centre: the least crop that gives the bucket's size."""
    return ImageOps.fit(image, bucket, method=Image.Resampling.BICUBIC)
