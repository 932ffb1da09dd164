"""'<colour> <shape>' pictures: a natural-image stand-in for ImageNet whose class names describe
the picture, so that CLIP's supported task has a meaning on toy data."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 225),
    "green": (40, 170, 60),
    "yellow": (240, 215, 40),
    "purple": (140, 50, 175),
    "orange": (250, 140, 30),
    "pink": (245, 120, 190),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (130, 80, 40),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
# The supported-task classes of the generated image folders (the class name describes the image).
SHAPE_CLASSES: tuple[str, ...] = (
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple cross",
    "orange ring",
)


def _cross(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices of a plus sign with arms 0.7 r wide, centred at (cx, cy), rotated by rot."""
    w = 0.35 * r
    # fmt: off
    pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w),
           (-r, -w), (-r, w), (-w, w), (-w, r)]
    # fmt: on
    c, s = np.cos(rot), np.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape centred at (cx, cy) with radius r, rotated by rot radians."""
    if shape == "cross":
        return _cross(cx, cy, r, rot)
    if shape == "star":
        radii, n = [r if i % 2 == 0 else 0.45 * r for i in range(10)], 10
    else:
        n = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}[shape]
        radii = [r] * n
        rot += np.pi / 4 if shape == "square" else 0.0
    ang = rot + np.arange(n) * 2 * np.pi / n - np.pi / 2
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, ang, strict=True)]


def parse_shape_class(name: str) -> tuple[tuple[int, int, int], str]:
    """(RGB colour, shape) of a '<colour> <shape>' class name; ValueError lists the choices."""
    colour, _, shape = name.rpartition(" ")
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(
            f"class {name!r} must be '<colour> <shape>' with colour in {sorted(COLOURS)} "
            f"and shape in {list(SHAPES)}"
        )
    return COLOURS[colour], shape


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Desaturated random colour + gradient + smooth (bicubic) blotches + grain."""
    bg = 0.55 * rng.uniform(40, 220, size=3) + 0.45 * rng.uniform(60, 200)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.normal(0, 15, size=3)
    coarse = rng.normal(0, 25, size=(1, 6, 6)) + rng.normal(0, 8, size=(3, 6, 6))  # luma + chroma
    coarse = np.ascontiguousarray(coarse.astype(np.float32))
    resize = (size, size)
    blur = np.stack(
        [np.asarray(Image.fromarray(c).resize(resize, Image.Resampling.BICUBIC)) for c in coarse],
        axis=-1,
    )
    grain = 1.0 + rng.normal(0, 0.04, size=(size, size, 1))
    return Image.fromarray(np.clip((bg + ramp + blur) * grain, 0, 255).astype(np.uint8), "RGB")


def shape_image(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a coloured shape on a random, desaturated, textured background."""
    colour, shape = parse_shape_class(name)
    big = 2 * size  # draw at 2x and downsample for anti-aliasing
    image = _background(rng, big)
    draw = ImageDraw.Draw(image)
    r = big * rng.uniform(0.18, 0.38)
    cx, cy = rng.uniform(r, big - r, size=2)
    fill = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in colour)
    if shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "ring":
            draw.ellipse(box, outline=fill, width=max(2, int(0.3 * r)))
        else:
            draw.ellipse(box, fill=fill)
    else:
        draw.polygon(polygon(shape, cx, cy, r, rng.uniform(-0.4, 0.4)), fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
