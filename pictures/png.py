"""
pictures/png.py — a dependency-free PNG writer (numpy and zlib), because readers would rather look.

In:  (H, W) arrays of floats, or (H, W, 3) uint8 pixels
Out: .png files (atomically written) or their bytes; the colour map the spectrogram pictures share;
     digits and lines drawn into pixels, for the curves
"""

import math
import struct
import zlib

import numpy as np
import torch

from ground.runtime import write_atomically


# A perceptually ordered colour map (viridis' anchor colours; dark = quiet, yellow = loud).
_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colorize(img: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through the colour map; NaN becomes mid-grey."""
    img = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(img)
    lo = np.nanmin(img[finite]) if vmin is None and finite.any() else (vmin if vmin is not None else 0.0)
    hi = np.nanmax(img[finite]) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    t = np.clip((np.where(finite, img, lo) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_CMAP) - 1)
    i = np.minimum(t.astype(int), len(_CMAP) - 2)
    frac = (t - i)[..., None]
    rgb = _CMAP[i] * (1 - frac) + _CMAP[i + 1] * frac
    rgb[~finite] = 128
    return rgb.round().astype(np.uint8)


def save_png(path: str, panels, vmin=None, vmax=None, min_height: int = 80) -> None:
    """Write one or more 2-D arrays as a PNG, stacked top to bottom with a white gap.

    Each panel is drawn with row 0 at the bottom (low frequencies low, as spectrograms are read),
    stretched by whole pixels to the widest panel's width and to at least `min_height` rows, so a
    5 x 53 token map sits visibly under an 80 x 848 mel. Values are coloured per panel (own min/max)
    unless vmin/vmax are given.
    """
    if not isinstance(panels, (list, tuple)):
        panels = [panels]
    arrays = [np.asarray(p.detach().cpu().float() if torch.is_tensor(p) else p, dtype=np.float64) for p in panels]
    width = max(a.shape[1] for a in arrays)
    rows = []
    for a in arrays:
        ky = max(1, math.ceil(min_height / a.shape[0]))
        kx = max(1, width // a.shape[1])
        big = np.repeat(np.repeat(a[::-1], ky, axis=0), kx, axis=1)
        rgb = colorize(big, vmin, vmax)
        if rgb.shape[1] < width:
            rgb = np.pad(rgb, ((0, 0), (0, width - rgb.shape[1]), (0, 0)), constant_values=255)
        rows += [rgb, np.full((4, width, 3), 255, np.uint8)]
    image = np.concatenate(rows[:-1], axis=0)                                        # (H, W, 3)
    write_atomically(path, lambda f: f.write(png_bytes(image)))


DIGITS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
          "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111"]   # 3 x 5


def draw_number(img, text: str, x: int, y: int, colour, scale: int = 3) -> None:
    """Write the digits (and '.') of `text` into the (H, W, 3) image with its top-left corner at (x, y)."""
    for ch in text:
        if ch == ".":
            img[y + 4 * scale:y + 5 * scale, x:x + scale] = colour
            x += 2 * scale
            continue
        bits = DIGITS[int(ch)]
        for k, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(k, 3)
                img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = colour
        x += 4 * scale


def draw_line(img: np.ndarray, a, b, colour, thick: int = 0) -> None:
    """A straight line from pixel a = (x, y) to b in the (H, W, 3) image, 2 * thick + 1 pixels wide."""
    (x0, y0), (x1, y1) = a, b
    for t in np.linspace(0, 1, 2 * max(abs(x1 - x0), abs(y1 - y0)) + 2):
        x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
        img[y - thick:y + thick + 1, x - thick:x + thick + 1] = colour


def png_bytes(pixels: np.ndarray, colours: np.ndarray | None = None) -> bytes:
    """A PNG file as bytes: (H, W, 3) uint8 RGB, or (H, W) uint8 indices into `colours` (<= 256 x 3,
    a palette image: one byte per pixel, about a third of RGB's size before compression)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = pixels.shape[:2]
    colour_type = 3 if colours is not None else 2
    raw = b"".join(b"\x00" + np.ascontiguousarray(pixels[y]).tobytes() for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
    if colours is not None:
        out += chunk(b"PLTE", np.asarray(colours, dtype=np.uint8).tobytes())
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
