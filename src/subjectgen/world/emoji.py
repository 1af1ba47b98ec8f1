"""Emoji images from the two offline sources, as RGBA cut to their content.

- Twemoji: npm `emoji-datasource-twitter` (64 px PNGs, CC-BY-4.0, (c) Twitter/X and contributors).
- Noto Color Emoji: Debian `fonts-noto-color-emoji` (OFL-1.1 font, Apache-2.0 images, (c) Google).
Locations come from $SUBJECTGEN_TWEMOJI (the npm package folder) and $SUBJECTGEN_NOTO_FONT, else the
usual install paths. Only the world knows emoji.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError

STYLES = ("twemoji", "noto")
NOTO_PATHS = ["/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"]
TWEMOJI_PATHS = ["node_modules/emoji-datasource-twitter", "/usr/lib/node_modules/emoji-datasource-twitter",
                 str(Path.home() / ".cache" / "subjectgen" / "npm" / "node_modules" / "emoji-datasource-twitter")]
INSTALL_HINT = ("install them with: apt-get install fonts-noto-color-emoji; "
                "npm install --prefix ~/.cache/subjectgen/npm emoji-datasource-twitter@16.0.0")


def _first_existing(env: str, candidates: list[str]) -> Path | None:
    for candidate in [os.environ.get(env)] + candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def sources_available() -> bool:
    return _first_existing("SUBJECTGEN_TWEMOJI", TWEMOJI_PATHS) is not None and \
        _first_existing("SUBJECTGEN_NOTO_FONT", NOTO_PATHS) is not None


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """short name -> emoji.json entry (name, unified code points, category, image file)."""
    root = _first_existing("SUBJECTGEN_TWEMOJI", TWEMOJI_PATHS)
    if root is None:
        raise UserError(f"the emoji sources are missing; {INSTALL_HINT}")
    entries = json.loads((root / "emoji.json").read_text())
    return {e["short_name"]: {**e, "root": str(root)} for e in entries if e.get("has_img_twitter")}


@lru_cache(maxsize=1)
def _noto_font() -> ImageFont.FreeTypeFont:
    path = _first_existing("SUBJECTGEN_NOTO_FONT", NOTO_PATHS)
    if path is None:
        raise UserError(f"the emoji sources are missing; {INSTALL_HINT}")
    return ImageFont.truetype(str(path), 109)  # a bitmap font: 109 px is its only size


@lru_cache(maxsize=4096)
def emoji_image(short_name: str, style: str) -> Image.Image:
    """The emoji as RGBA, cropped to its visible pixels."""
    entry = catalog().get(short_name)
    if entry is None:
        raise KeyError(f"no emoji named {short_name!r}")
    if style == "twemoji":
        image = Image.open(Path(entry["root"]) / "img" / "twitter" / "64" / entry["image"]).convert("RGBA")
    else:
        text = "".join(chr(int(cp, 16)) for cp in entry["unified"].split("-"))
        image = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((8, 8), text, font=_noto_font(), embedded_color=True)
    box = image.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    return image.crop(box) if box else image
