"""Photos that are not of skin, for fitting and measuring the web service's "not skin" answer.

Everything here is offline: the photos bundled with scikit-image, scikit-learn and Matplotlib,
and images rendered on the spot (documents, app screenshots, charts, patterns). The sources are
split in two disjoint sets: ``fit`` (the router learns from these) and ``test`` (only
``bench/app_models.py`` measures on these), so a measurement never sees a photo, or a crop of
a photo, that fitting saw; rendered images differ in seed and layout family.

Portraits (scikit-image's astronaut, Matplotlib's Grace Hopper) are left out of both: a face
is what a photo of acne or rosacea shows, so "not skin" would be the wrong answer for them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Bundled photos by split: (package, name). Hard cases were put on both sides where there are
# two of a kind (printed text: page/text; medical non-skin: retina/histology and cells).
PHOTOS: dict[str, tuple[tuple[str, str], ...]] = {
    "fit": (("skimage", "chelsea"), ("skimage", "coffee"), ("skimage", "rocket"),
            ("skimage", "brick"), ("skimage", "grass"), ("skimage", "camera"),
            ("skimage", "moon"), ("skimage", "coins"), ("skimage", "retina"),
            ("skimage", "page"), ("skimage", "colorwheel"), ("skimage", "hubble_deep_field"),
            ("skimage", "logo"), ("skimage", "horse"), ("sklearn", "china.jpg"),
            ("skimage", "motorcycle_left.png")),
    "test": (("skimage", "immunohistochemistry"), ("skimage", "text"), ("skimage", "gravel"),
             ("skimage", "clock"), ("skimage", "cell"), ("skimage", "microaneurysms"),
             ("sklearn", "flower.jpg"), ("matplotlib", "Minduka_Present_Blue_Pack.png"),
             ("matplotlib", "logo2.png")),
}
SEEDS = {"fit": 1000, "test": 9000}  # rendered images: disjoint seed ranges
WORDS = ("patient", "report", "invoice", "total", "date", "meeting", "agenda", "the", "and",
         "results", "page", "summary", "notes", "project", "review", "order", "account",
         "balance", "recipe", "chapter", "section", "figure", "table", "email", "settings")


@dataclass(frozen=True)
class Negative:
    """One non-skin image: ``kind`` (photo, document, screenshot, chart, pattern), ``name``
    (the source photo or the generator and its seed) and the RGB pixels."""

    kind: str
    name: str
    image: np.ndarray  # (H, W, 3) uint8


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def load_photo(package: str, name: str) -> np.ndarray:
    """One bundled photo as RGB uint8."""
    if package == "skimage":
        import skimage.data

        if name.endswith(".png"):
            folder = Path(skimage.data.__file__).parent
            return _rgb(np.asarray(Image.open(folder / name).convert("RGB")))
        return _rgb(getattr(skimage.data, name)())
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(name))
    if package == "matplotlib":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / name
        return _rgb(np.asarray(Image.open(path).convert("RGB")))
    raise ValueError(f"unknown photo package {package!r}")


def _crops(photo: np.ndarray, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The whole photo, then ``n - 1`` random crops (10-100% of its area) with flips: what a
    phone framing the same scene differently would see."""
    h, w = photo.shape[:2]
    yield photo
    for _ in range(n - 1):
        share = rng.uniform(0.1, 1.0)
        ch = max(16, int(h * np.sqrt(share)))
        cw = max(16, int(w * np.sqrt(share)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y:y + ch, x:x + cw]
        yield np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int],
                ink: tuple[int, ...], size: int) -> None:
    x0, y0, _, y1 = box
    y = y0
    font = _font(size)
    while y + size < y1:
        words = " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))
        draw.text((x0 + int(rng.integers(0, 12)), y), words.capitalize(), fill=ink, font=font)
        y += int(size * rng.uniform(1.3, 2.0))


def render_document(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A page of text as a phone photographs it: paper tone, ink, a heading, slight rotation,
    uneven light and blur."""
    paper = tuple(int(v) for v in rng.integers(215, 256, 3))
    img = Image.new("RGB", (size, int(size * rng.uniform(1.0, 1.4))), paper)
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    draw.text((20, 12), " ".join(rng.choice(WORDS, 3)).upper(), fill=ink,
              font=_font(int(rng.integers(18, 30))))
    _text_lines(draw, rng, (16, 50, size - 16, img.height - 10), ink, int(rng.integers(9, 17)))
    img = img.rotate(float(rng.uniform(-8, 8)), expand=True,
                     fillcolor=tuple(int(v) for v in rng.integers(40, 160, 3)))
    a = np.asarray(img, np.float32)
    light = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.1), a.shape[1])[None, :, None]
    a = np.clip(a * light, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2))))


def render_screenshot(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A phone app screen: a coloured bar, cards, buttons and lines of text."""
    dark = rng.random() < 0.3
    bg = (24, 24, 28) if dark else (250, 250, 252)
    fg = (230, 230, 230) if dark else (30, 30, 30)
    h = int(size * rng.uniform(1.6, 2.1))
    img = Image.new("RGB", (size, h), bg)
    draw = ImageDraw.Draw(img)
    accent = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.rectangle((0, 0, size, 48), fill=accent)
    draw.text((14, 14), " ".join(rng.choice(WORDS, 2)).title(), fill=(255, 255, 255),
              font=_font(18))
    y = 60
    while y < h - 60:
        card_h = int(rng.integers(40, 110))
        card = tuple(int(v) for v in (np.array(bg) + (20 if dark else -12)).clip(0, 255))
        draw.rounded_rectangle((10, y, size - 10, y + card_h), radius=8, fill=card)
        if rng.random() < 0.4:
            draw.ellipse((18, y + 8, 18 + 28, y + 36), fill=accent)
        _text_lines(draw, rng, (52, y + 6, size - 20, y + card_h - 4), fg,
                    int(rng.integers(10, 15)))
        y += card_h + int(rng.integers(8, 20))
    draw.rounded_rectangle((size // 4, h - 50, 3 * size // 4, h - 14), radius=14, fill=accent)
    return np.asarray(img)


def render_chart(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A line, bar, scatter or pie chart drawn by Matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size / 80, size / 80 * 0.75), dpi=80)
    kind = int(rng.integers(4))
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(np.cumsum(rng.normal(size=40)))
    elif kind == 1:
        ax.bar(range(8), rng.uniform(1, 10, 8), color=rng.uniform(0, 1, (8, 3)))
    elif kind == 2:
        xy = rng.normal(size=(2, 120))
        ax.scatter(xy[0], xy[1], c=rng.uniform(size=120), s=12)
    else:
        ax.pie(rng.uniform(1, 5, 5))
    ax.set_title(" ".join(rng.choice(WORDS, 2)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _rgb(np.asarray(Image.open(buf).convert("RGB")))


def render_pattern(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Noise, a gradient, stripes or random shapes: what a covered or shaken lens gives."""
    kind = int(rng.integers(4))
    if kind == 0:
        a = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(rng.uniform(0, 3))))
    if kind == 1:
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = np.linspace(0, 1, size)[None, :, None]
        return np.repeat((c0 + (c1 - c0) * t).astype(np.uint8), size, axis=0)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 25))):
        box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        xy = (box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if kind == 2 else draw.ellipse)(xy, fill=fill)
    return np.asarray(img)


RENDERERS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "document": render_document, "screenshot": render_screenshot, "chart": render_chart,
    "pattern": render_pattern}


def negative_images(split: str, *, crops_per_photo: int = 8, rendered_per_kind: int = 25
                    ) -> list[Negative]:
    """The ``fit`` or ``test`` set of non-skin images (deterministic)."""
    if split not in PHOTOS:
        raise ValueError(f"negatives split must be one of {sorted(PHOTOS)}, got {split!r}")
    rng = np.random.default_rng(SEEDS[split])
    out = []
    for package, name in PHOTOS[split]:
        photo = load_photo(package, name)
        out += [Negative("photo", f"{name}#{i}", c)
                for i, c in enumerate(_crops(photo, crops_per_photo, rng))]
    for kind, render in RENDERERS.items():
        for i in range(rendered_per_kind):
            seed = SEEDS[split] + 100 * list(RENDERERS).index(kind) + i
            out.append(Negative(kind, f"{kind}#{seed}", render(np.random.default_rng(seed))))
    return out
