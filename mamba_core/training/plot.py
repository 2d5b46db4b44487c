"""A loss-curve PNG with nothing but NumPy, zlib and struct.

Why not matplotlib: it would be the only reason for a ~40 MB dependency tree in a library whose
core needs NumPy and pluggy; a line plot with tick labels is a few dozen lines. The image shows
the training loss (blue), validation loss (red dots joined), the unigram baseline (grey dashes),
y tick labels in nats and the first/last step on the x axis.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_GLYPHS = {  # 3 x 5 bitmap font: the characters the plot writes
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "a": "000011101101011", "e": "000111111100011", "g": "011101011001110", "i": "010000010010010",
    "l": "010010010010010", "m": "000111111101101", "n": "000110101101101", "o": "000010101101010",
    "p": "000110101110100", "r": "000101110100100", "s": "000011010001110", "t": "010111010010001",
    "u": "000101101101011", "v": "000101101101010", " ": "000000000000000",
}
BLUE, RED, GREY, BLACK, LIGHT = (31, 119, 180), (214, 39, 40), (120, 120, 120), (0, 0, 0), (225, 225, 225)


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _text(img, x: int, y: int, s: str, color=BLACK, scale: int = 2) -> None:
    for ch in s.lower():
        bits = _GLYPHS.get(ch, _GLYPHS[" "])
        for i, b in enumerate(bits):
            if b == "1":
                r, c = divmod(i, 3)
                img[y + r * scale: y + (r + 1) * scale, x + c * scale: x + (c + 1) * scale] = color
        x += 4 * scale


def _line(img, x0, y0, x1, y1, color, dashed=False, width=2) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.round(np.linspace(x0, x1, n)).astype(int)
    ys = np.round(np.linspace(y0, y1, n)).astype(int)
    if dashed:
        keep = (np.arange(n) // 6) % 2 == 0
        xs, ys = xs[keep], ys[keep]
    h, w, _ = img.shape
    for dy in range(width):
        for dx in range(width):
            yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
            img[yy, xx] = color


def loss_curve_png(path: str, train: list, val: list | None = None, baseline: float | None = None,
                   width: int = 720, height: int = 420) -> None:
    """Write the curve. train: [(step, loss)], val: [(step, loss)], baseline: nats or None."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 20, 50
    pw, ph = width - left - right, height - top - bottom
    pts = [(s, v) for s, v in train if np.isfinite(v)] + [(s, v) for s, v in (val or []) if np.isfinite(v)]
    ys = [v for _, v in pts] + ([baseline] if baseline is not None else [])
    if not pts:
        pts, ys = [(0, 0.0), (1, 1.0)], [0.0, 1.0]
    x_lo, x_hi = min(s for s, _ in pts), max(s for s, _ in pts)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_lo, y_hi = 0.0, max(ys) * 1.05 if max(ys) > 0 else 1.0

    def px(s, v):
        return left + (s - x_lo) / (x_hi - x_lo) * pw, top + (1 - (v - y_lo) / (y_hi - y_lo)) * ph

    n_ticks = 5
    for i in range(n_ticks + 1):
        v = y_lo + (y_hi - y_lo) * i / n_ticks
        _, y = px(x_lo, v)
        _line(img, left, y, left + pw, y, LIGHT, width=1)
        _text(img, 8, int(y) - 5, f"{v:.2f}")
    _line(img, left, top, left, top + ph, BLACK)
    _line(img, left, top + ph, left + pw, top + ph, BLACK)
    _text(img, left, top + ph + 10, f"{x_lo}")
    last = f"{x_hi}"
    _text(img, left + pw - 8 * len(last), top + ph + 10, last)
    _text(img, left + pw // 2 - 16, top + ph + 10, "step")
    _text(img, 8, top + ph + 30, "loss nats")
    if baseline is not None:
        _, y = px(x_lo, baseline)
        _line(img, left, y, left + pw, y, GREY, dashed=True)
    for series, color in ((train, BLUE), (val or [], RED)):
        series = [(s, v) for s, v in series if np.isfinite(v)]
        for (s0, v0), (s1, v1) in zip(series, series[1:]):
            _line(img, *px(s0, v0), *px(s1, v1), color)
        if color is RED:
            for s, v in series:
                x, y = px(s, v)
                img[max(int(y) - 3, 0): int(y) + 4, max(int(x) - 3, 0): int(x) + 4] = RED
    lx, ly = left + pw - 200, top + 8
    for i, (label, color) in enumerate((("train", BLUE), ("val", RED), ("unigram", GREY))):
        _line(img, lx, ly + 16 * i + 5, lx + 30, ly + 16 * i + 5, color, dashed=label == "unigram")
        _text(img, lx + 40, ly + 16 * i, label)
    with open(path, "wb") as f:
        f.write(_png(img))
