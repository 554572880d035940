"""Rendering: each scene drawn as anti-aliased icons on a 3x3 grid, deterministically (identical
PNG bytes for identical scenes)."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw

from mmalign.scene.world import BACKGROUNDS, COLORS, Color, Scene

_SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased icons, still deterministic
_DARK: Color = (55, 55, 60)
_WHITE: Color = (255, 255, 255)
_SILVER: Color = (185, 190, 198)
_BROWN: Color = (115, 78, 42)
_STEM: Color = (35, 115, 45)


def _mix(color: Color, other: Color, amount: float) -> Color:
    r, g, b = (round(a + (o - a) * amount) for a, o in zip(color, other, strict=True))
    return (r, g, b)


class _Pen:
    """Draws in unit coordinates of one object's box: (0, 0) top left, (1, 1) bottom right."""

    def __init__(self, image: Image.Image, bbox: tuple[int, int, int, int], scale: int) -> None:
        self.image, self.draw, self.scale = image, ImageDraw.Draw(image), scale
        x, y, w, h = bbox
        self.x, self.y, self.w, self.h = x * scale, y * scale, w * scale, h * scale

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return (self.x + u * (self.w - 1), self.y + v * (self.h - 1))

    def box(self, u0: float, v0: float, u1: float, v1: float) -> tuple[float, float, float, float]:
        return (*self.pt(u0, v0), *self.pt(u1, v1))

    def polygon(self, points: list[tuple[float, float]], fill: Color) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=fill)

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: Color) -> None:
        self.draw.rectangle(self.box(u0, v0, u1, v1), fill=fill)

    def ellipse(
        self,
        u0: float,
        v0: float,
        u1: float,
        v1: float,
        fill: Color | None = None,
        outline: Color | None = None,
        width: float = 1.0,
    ) -> None:
        self.draw.ellipse(
            self.box(u0, v0, u1, v1), fill=fill, outline=outline, width=round(width * self.scale)
        )

    def circle(self, u: float, v: float, r: float, fill: Color) -> None:
        """A true circle; ``r`` is a share of the box's shorter side."""
        cx, cy = self.pt(u, v)
        radius = r * min(self.w, self.h)
        self.draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)

    def line(self, points: list[tuple[float, float]], fill: Color, width: float = 1.0) -> None:
        self.draw.line(
            [self.pt(u, v) for u, v in points], fill=fill, width=round(width * self.scale)
        )


def _draw_ball(pen: _Pen, c: Color) -> None:
    pen.circle(0.5, 0.5, 0.5, c)
    pen.line([(0.1, 0.5), (0.9, 0.5)], _DARK)
    pen.circle(0.33, 0.3, 0.1, _WHITE)


def _draw_boat(pen: _Pen, c: Color) -> None:
    pen.polygon([(0.0, 0.65), (1.0, 0.65), (0.8, 1.0), (0.2, 1.0)], c)
    pen.line([(0.48, 0.0), (0.48, 0.65)], _DARK)
    pen.polygon([(0.53, 0.05), (0.53, 0.58), (0.9, 0.58)], _mix(c, _WHITE, 0.45))


def _draw_book(pen: _Pen, c: Color) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, c)
    pen.rect(0.0, 0.0, 0.2, 1.0, _mix(c, _DARK, 0.5))
    for v in (0.3, 0.5, 0.7):
        pen.line([(0.35, v), (0.85, v)], _WHITE)


def _draw_bottle(pen: _Pen, c: Color) -> None:
    pen.rect(0.32, 0.0, 0.68, 0.32, c)
    pen.draw.rounded_rectangle(pen.box(0.0, 0.25, 1.0, 1.0), radius=pen.w * 0.3, fill=c)
    pen.rect(0.0, 0.55, 1.0, 0.75, _WHITE)


def _draw_car(pen: _Pen, c: Color) -> None:
    pen.polygon([(0.2, 0.45), (0.33, 0.08), (0.7, 0.08), (0.85, 0.45)], c)
    pen.polygon([(0.36, 0.4), (0.42, 0.18), (0.62, 0.18), (0.7, 0.4)], _mix(c, _WHITE, 0.6))
    pen.rect(0.0, 0.42, 1.0, 0.8, c)
    pen.circle(0.24, 0.8, 0.2, _DARK)
    pen.circle(0.76, 0.8, 0.2, _DARK)


def _draw_cup(pen: _Pen, c: Color) -> None:
    pen.ellipse(0.55, 0.3, 1.0, 0.75, outline=c, width=1.5)
    pen.polygon([(0.0, 0.15), (0.78, 0.15), (0.66, 1.0), (0.12, 1.0)], c)


def _draw_fire(pen: _Pen, c: Color) -> None:
    outer = [
        (0.5, 0.0),
        (0.72, 0.3),
        (0.95, 0.55),
        (0.9, 0.85),
        (0.5, 1.0),
        (0.1, 0.85),
        (0.05, 0.55),
        (0.3, 0.35),
    ]
    pen.polygon(outer, c)
    pen.polygon([(u * 0.5 + 0.25, v * 0.5 + 0.5) for u, v in outer], _mix(c, _WHITE, 0.6))


def _draw_fish(pen: _Pen, c: Color) -> None:
    pen.polygon([(0.0, 0.1), (0.32, 0.5), (0.0, 0.9)], c)
    pen.ellipse(0.2, 0.1, 1.0, 0.9, fill=c)
    pen.circle(0.8, 0.42, 0.09, _DARK)


def _draw_flower(pen: _Pen, c: Color) -> None:
    pen.line([(0.5, 0.4), (0.5, 1.0)], _STEM)
    pen.ellipse(0.5, 0.65, 0.85, 0.8, fill=_STEM)
    for du, dv in ((0.0, -0.2), (0.27, -0.06), (0.17, 0.2), (-0.17, 0.2), (-0.27, -0.06)):
        pen.circle(0.5 + du, 0.3 + dv * 0.7, 0.18, c)
    pen.circle(0.5, 0.3, 0.12, _BROWN)


def _draw_house(pen: _Pen, c: Color) -> None:
    pen.rect(0.1, 0.45, 0.9, 1.0, c)
    pen.polygon([(0.0, 0.5), (0.5, 0.0), (1.0, 0.5)], _DARK)
    pen.rect(0.42, 0.7, 0.58, 1.0, _DARK)


def _draw_knife(pen: _Pen, c: Color) -> None:
    pen.polygon([(0.38, 0.1), (1.0, 0.1), (0.72, 0.9), (0.38, 0.9)], _SILVER)
    pen.rect(0.0, 0.3, 0.4, 0.7, c)


def _draw_moon(pen: _Pen, c: Color) -> None:
    mask = Image.new("L", (round(pen.w), round(pen.h)), 0)
    cut = ImageDraw.Draw(mask)
    cut.ellipse((0, 0, pen.w - 1, pen.h - 1), fill=255)
    cut.ellipse((pen.w * 0.35, -pen.h * 0.15, pen.w * 1.25, pen.h * 0.8), fill=0)
    pen.image.paste(c, (round(pen.x), round(pen.y)), mask)


def _draw_pill(pen: _Pen, c: Color) -> None:
    pen.ellipse(0.0, 0.2, 0.6, 0.8, fill=c)
    pen.ellipse(0.4, 0.2, 1.0, 0.8, fill=_WHITE)
    pen.rect(0.3, 0.2, 0.5, 0.8, c)
    pen.rect(0.5, 0.2, 0.7, 0.8, _WHITE)
    pen.draw.rounded_rectangle(
        pen.box(0.0, 0.2, 1.0, 0.8), radius=pen.h * 0.3, outline=_DARK, width=pen.scale // 2
    )


def _draw_star(pen: _Pen, c: Color) -> None:
    points = []
    for i in range(10):
        r = 0.5 if i % 2 == 0 else 0.2
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((0.5 + r * math.cos(angle), 0.55 + r * math.sin(angle)))
    pen.polygon(points, c)


def _draw_table(pen: _Pen, c: Color) -> None:
    pen.rect(0.0, 0.15, 1.0, 0.35, c)
    pen.rect(0.08, 0.35, 0.2, 1.0, c)
    pen.rect(0.8, 0.35, 0.92, 1.0, c)


def _draw_tree(pen: _Pen, c: Color) -> None:
    pen.rect(0.38, 0.55, 0.62, 1.0, _BROWN)
    pen.circle(0.5, 0.36, 0.5, c)


_DRAWERS: dict[str, Callable[[_Pen, Color], None]] = {
    "ball": _draw_ball,
    "boat": _draw_boat,
    "book": _draw_book,
    "bottle": _draw_bottle,
    "car": _draw_car,
    "cup": _draw_cup,
    "fire": _draw_fire,
    "fish": _draw_fish,
    "flower": _draw_flower,
    "house": _draw_house,
    "knife": _draw_knife,
    "moon": _draw_moon,
    "pill": _draw_pill,
    "star": _draw_star,
    "table": _draw_table,
    "tree": _draw_tree,
}


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene`` (``image_size`` square): background, faint texture, icons.

    An object's color paints its main part (a knife's handle, a house's walls, a tree's
    crown); small details keep fixed colors so the shape stays recognisable.
    """
    s, n = _SUPERSAMPLE, scene.image_size
    base = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (n * s, n * s), base)
    draw = ImageDraw.Draw(image)
    rng = random.Random(f"mmalign-texture/{scene.seed}/{scene.id}")
    for _ in range(n * n // 16):  # light speckle so the background is not perfectly flat
        x, y, d = rng.randrange(n), rng.randrange(n), rng.randint(-12, 12)
        speck = tuple(max(0, min(255, v + d)) for v in base)
        draw.rectangle((x * s, y * s, x * s + s - 1, y * s + s - 1), fill=speck)
    for obj in sorted(scene.objects, key=lambda o: not o.behind):  # hidden objects first, under the rest
        _DRAWERS[obj.category](_Pen(image, obj.bbox, s), COLORS[obj.color])
    return image.reduce(s)


def render_png(scene: Scene) -> bytes:
    """PNG bytes of ``render(scene)``; byte-identical for identical scenes (no metadata)."""
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
