"""Drawing instances on an image with PIL and numpy: masks blended in their colour, boxes outlined,
a label ("person 87%") on a filled tag at each box's top-left corner; panels side by side with a title
band. A category always gets the same colour (color_for), in the ground truth and in the predictions."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: distinct, saturated colours (RGB); category c gets PALETTE[c % len(PALETTE)]
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)
MASK_ALPHA = 0.45
TITLE_HEIGHT = 22
GAP = 6


@dataclass
class Drawable:
    """One instance to draw: box XYWH in pixels, label text, RGB colour, optional [H, W] bool mask."""

    bbox: Sequence[float]
    label: str
    color: Tuple[int, int, int]
    mask: Optional[np.ndarray] = None


def color_for(category_id: int) -> Tuple[int, int, int]:
    return PALETTE[int(category_id) % len(PALETTE)]


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def line_width(height: int, width: int) -> int:
    return max(1, round(max(height, width) / 320))


def draw_instances(image: np.ndarray, instances: Sequence[Drawable]) -> np.ndarray:
    """A copy of `image` ([H, W, 3] uint8) with `instances` drawn: every mask first, then every box and tag
    (so no mask hides a box)."""
    out = np.asarray(image, dtype=np.uint8)[..., :3].astype(np.float32)
    height, width = out.shape[:2]
    for inst in instances:
        if inst.mask is not None and inst.mask.shape == (height, width):
            m = inst.mask.astype(bool)
            out[m] = out[m] * (1 - MASK_ALPHA) + np.asarray(inst.color, np.float32) * MASK_ALPHA
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    lw = line_width(height, width)
    text_font = font(max(10, min(16, round(max(height, width) / 40))))
    for inst in instances:
        x, y, w, h = (float(v) for v in inst.bbox)
        draw.rectangle([x, y, x + max(w, 0.0), y + max(h, 0.0)], outline=inst.color, width=lw)
    for inst in instances:  # tags last: on top of every box
        if not inst.label:
            continue
        x, y = float(inst.bbox[0]), float(inst.bbox[1])
        left, top, right, bottom = draw.textbbox((0, 0), inst.label, font=text_font)
        tw, th = right - left + 4, bottom - top + 2
        ty = y - th if y - th >= 0 else y  # above the box, or inside it at the image's top edge
        x = max(0.0, min(x, width - tw))  # inside the image at its right edge
        draw.rectangle([x, ty, x + tw, ty + th], fill=inst.color)
        dark = sum(c * k for c, k in zip(inst.color, (0.299, 0.587, 0.114))) > 150
        draw.text((x + 2 - left, ty + 1 - top), inst.label, fill=(0, 0, 0) if dark else (255, 255, 255), font=text_font)
    return np.asarray(canvas)


def with_title(image: np.ndarray, title: str) -> np.ndarray:
    """`image` under a white band holding `title`."""
    height, width = image.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_HEIGHT), (255, 255, 255))
    canvas.paste(Image.fromarray(np.asarray(image, np.uint8)), (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0), font=font(14))
    return np.asarray(canvas)


def side_by_side(panels: List[np.ndarray]) -> np.ndarray:
    """Panels left to right, top-aligned, GAP white pixels apart."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    return out


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` scaled down so that its longer side is at most `max_side` (unchanged when it is already)."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
