"""
pictures/decoding_page.py — pictures of MaskGIT's decoding for a reader: a self-contained HTML page that plays
the sampling steps one by one, and a labelled PNG of a take's mel and decoding order.

Paper: "SpecMaskGIT" (ISMIR 2024).
  Sec. 3.4  parallel iterative decoding: at each of 16 steps every masked token is drawn at once, the
            most confident are kept (cosine schedule), guidance ramps up (Eq. 2), Gumbel noise on the
            confidence cools down (Eq. 3). The page shows each step: which tokens were committed, what
            the whole grid would sound like if decoding stopped there, and the step's numbers.

In:  step_record(info) of each step of specmaskgit.generate(on_step=...), the mels and sounds of its beliefs
Out: one .html file (no network, nothing outside itself: images and sounds are data: URIs, the
     script and style are inline) and one .png (>= 800 px wide, axes in seconds and Hz, colour legends)

Not the method: HTML and a bitmap font (the PNG encoder is png.png_bytes). Its own file so that sample.py stays the
sampler's command line. sample.py --html and --png call it.
"""

import base64
import html
import math
import time

import numpy as np
import torch

import mel
from ground import audio_io
from pictures import png
from ground.runtime import write_atomically

PAGE_SR = 11025                                # each step's belief as sound: 11025 Hz, 8 bit (size, not quality)
HZ_TICKS = (250, 500, 1000, 2000, 4000, 7000)  # marked on the mel-scale frequency axis


class StepLog:
    """The sampler's on_step observer (specmaskgit.generate or magnet.generate): a progress line per step when
    `verbose`, the decoding order (the step that committed each position, -1 = known) and, when `record` is a
    list, step_record of every step (for the page)."""

    def __init__(self, verbose: bool = True, record: list | None = None):
        self.verbose, self.record, self.order, self.t0 = verbose, record, None, time.time()

    def __call__(self, info: dict) -> None:
        if self.order is None:
            self.order = torch.full_like(info["committed"], -1, dtype=torch.long)   # (B, n)
        self.order.masked_fill_(info["committed"], info["step"])
        if self.verbose:
            print(f"  step {info['step'] + 1:2d}/{info['steps']}: {info['n_masked']:4d} tokens still masked "
                  f"({time.time() - self.t0:.1f} s)", flush=True)
        if self.record is not None:
            self.record.append(step_record(info))

    def decoding_order(self, tokens: torch.Tensor) -> torch.Tensor:
        """The order (B, rows, cols) on the host, shaped as `tokens`; all -1 when no step ran (all known)."""
        order = torch.full(tokens.shape, -1, dtype=torch.long) if self.order is None else self.order
        return order.view(tokens.shape).cpu()


def step_record(info: dict) -> dict:
    """What one step of specmaskgit.generate did (its on_step info), as CPU copies for the page.

    Over the n = rows x cols positions of the grid: committed (B, n) bool: committed at this step;
    masked (B, n) bool: still masked after it; known (B, n) bool: given by the caller; belief (B, n) long:
    the tokens now, with the drawn prediction at every still-masked position; n_masked (B,) long;
    cfg_scale: t of Eq. 2; temperature: t_g of Eq. 3; confidence (B,): mean p(drawn token) over the
    positions committed at this step (nan if none); schedule: the masking schedule's name, for the page.
    """
    committed, masked = info["committed"], info["masked"]
    confidence = (info["logp_drawn"].exp() * committed).sum(1) / committed.sum(1)   # (B,) nan if none committed
    return {"step": info["step"], "committed": committed.cpu(), "masked": masked.cpu(), "known": info["known"].cpu(),
            "belief": info["belief"].cpu(), "n_masked": masked.sum(1).cpu(), "cfg_scale": float(info["cfg_scale"]),
            "temperature": float(info["temperature"]), "confidence": confidence.float().cpu(),
            "schedule": info["schedule"]}


# ---------------------------------------------------------------------------------------------------
# Colours and scales shared by the page and the figure.
# ---------------------------------------------------------------------------------------------------

def palette() -> np.ndarray:
    """(256, 3) uint8: png.colorize's colour map (dark = quiet, yellow = loud) as a lookup table."""
    return png.colorize(np.linspace(0.0, 1.0, 256)[None, :], 0.0, 1.0)[0]


def db_index(log_mel) -> np.ndarray:
    """(80, F) natural-log mel -> (80, F) uint8 palette indices over the tokenizer's range [-80, 20] dB,
    low frequencies at the bottom. One fixed range, so that steps and takes compare by colour."""
    db = np.asarray(torch.as_tensor(log_mel).detach().float().cpu(), dtype=np.float64) * mel.DB_PER_NEPER
    t = np.clip((db - mel.DB_MIN) / (mel.DB_MAX - mel.DB_MIN), 0.0, 1.0)
    return (t[::-1] * 255).round().astype(np.uint8)


def mel_bin_position(hz: float) -> float:
    """Where `hz` lies on the mel axis, as a fraction of its height (0 = bottom edge of bin 0).

    The 80 bins are triangles centred at equal mel steps from fmin to fmax (mel.mel_filterbank): bin i
    is centred at point i + 1 of 82 evenly spaced mels, and pixel row i spans [i, i + 1] / 80.
    """
    points = mel.mel_points()                                                      # (82,) mels
    step = points[1] - points[0]
    return float((mel.hz_to_mel(hz) - points[1]) / step + 0.5) / mel.N_MELS


def row_band_hz(row: int) -> tuple[float, float]:
    """The centre frequencies of the first and last of the 16 mel bins that token row `row` covers."""
    points = mel.mel_to_hz(mel.mel_points())                                       # (82,) Hz
    return float(points[16 * row + 1]), float(points[16 * row + 16])


def time_ticks(seconds: float) -> list[float]:
    """Tick marks every 0.5 s for a short clip, every 1 s up to 20 s, then every 5 s."""
    step = 0.5 if seconds <= 4 else (1.0 if seconds <= 20 else 5.0)
    return [k * step for k in range(int(seconds / step) + 1)]


def data_uri(kind: str, payload: bytes) -> str:
    return f"data:{kind};base64," + base64.b64encode(payload).decode("ascii")


# ---------------------------------------------------------------------------------------------------
# The labelled PNG (sample.py --png): mel on top, decoding order below, axes and legends in a 5 x 7 font.
# ---------------------------------------------------------------------------------------------------

# Each glyph: 7 rows of 5 pixels, written as bits. Enough for numbers, units and lower-case labels.
_GLYPHS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000", ".": "00000 00000 00000 00000 00000 01100 01100",
    "-": "00000 00000 00000 11111 00000 00000 00000", ",": "00000 00000 00000 00000 01100 00100 01000",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000", "/": "00000 00001 00010 00100 01000 10000 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000", "H": "10001 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "a": "00000 00000 01110 00001 01111 10001 01111", "b": "10000 10000 10110 11001 10001 10001 11110",
    "c": "00000 00000 01110 10000 10000 10001 01110", "d": "00001 00001 01101 10011 10001 10001 01111",
    "e": "00000 00000 01110 10001 11111 10000 01110", "f": "00110 01001 01000 11100 01000 01000 01000",
    "g": "00000 01111 10001 10001 01111 00001 01110", "h": "10000 10000 10110 11001 10001 10001 10001",
    "i": "00100 00000 01100 00100 00100 00100 01110", "j": "00010 00000 00110 00010 00010 10010 01100",
    "k": "10000 10000 10010 10100 11000 10100 10010", "l": "01100 00100 00100 00100 00100 00100 01110",
    "m": "00000 00000 11010 10101 10101 10001 10001", "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110", "p": "00000 00000 11110 10001 11110 10000 10000",
    "q": "00000 00000 01101 10011 01111 00001 00001", "r": "00000 00000 10110 11001 10000 10000 10000",
    "s": "00000 00000 01110 10000 01110 00001 11110", "t": "01000 01000 11100 01000 01000 01001 00110",
    "u": "00000 00000 10001 10001 10001 10011 01101", "v": "00000 00000 10001 10001 10001 01010 00100",
    "w": "00000 00000 10001 10001 10101 10101 01010", "x": "00000 00000 10001 01010 00100 01010 10001",
    "y": "00000 00000 10001 10001 01111 00001 01110", "z": "00000 00000 11111 00010 00100 01000 11111",
}
SCALE = 2                                        # each font pixel drawn as 2 x 2: 10 x 14 px letters
CHAR_W, CHAR_H = 6 * SCALE, 7 * SCALE            # advance (5 pixels + 1 space) and height


def text_width(s: str) -> int:
    return len(s) * CHAR_W - SCALE


def draw_text(img: np.ndarray, x: int, y: int, s: str, colour=(0, 0, 0)) -> None:
    """Draw `s` with its top-left corner at (x, y); letters without a glyph are drawn lower-case or blank."""
    for ch in s:
        rows = _GLYPHS.get(ch, _GLYPHS.get(ch.lower(), _GLYPHS[" "])).split()
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                if bit == "1":
                    img[y + r * SCALE:y + (r + 1) * SCALE, x + c * SCALE:x + (c + 1) * SCALE] = colour
        x += CHAR_W


def figure(log_mel: torch.Tensor, order: torch.Tensor | None = None, min_width: int = 800) -> np.ndarray:
    """(H, W, 3) uint8: the mel in dB over time and mel-scale frequency, and below it the token grid
    coloured by the step at which each token was committed (grey = given by the caller), with axes."""
    n_mels, frames = log_mel.shape
    kx = max(1, math.ceil(min_width / frames))                   # whole pixels per mel frame
    ky = 3                                                       # pixels per mel bin
    plot_w, mel_h = frames * kx, n_mels * ky
    left, right, top, gap, bottom = 76, 150, 30, 40, 48
    order_h = 0 if order is None else order.shape[0] * 24
    height = top + mel_h + (gap + order_h if order is not None else 0) + bottom
    img = np.full((height, left + plot_w + right, 3), 255, np.uint8)
    pal = palette()

    # the mel: fixed range -80..20 dB, one palette colour per value
    img[top:top + mel_h, left:left + plot_w] = pal[np.repeat(np.repeat(db_index(log_mel), ky, 0), kx, 1)]
    draw_text(img, left, top - CHAR_H - 8, "mel spectrogram (dB)")
    draw_text(img, 4, top - CHAR_H - 8, "Hz")
    for hz in HZ_TICKS:
        y = top + mel_h - int(round(mel_bin_position(hz) * mel_h))
        if top <= y < top + mel_h:
            img[y, left - 6:left] = 0
            label = f"{hz // 1000}k" if hz >= 1000 else str(hz)
            draw_text(img, left - 10 - text_width(label), y - CHAR_H // 2, label)
    # its legend: a vertical colour bar from -80 dB (bottom) to 20 dB (top)
    bar_x = left + plot_w + 16
    for y in range(mel_h):
        img[top + y, bar_x:bar_x + 16] = pal[255 - int(y * 255 / (mel_h - 1))]
    for db, y in ((mel.DB_MAX, top), (mel.DB_MIN, top + mel_h - CHAR_H)):
        draw_text(img, bar_x + 22, y, f"{db:.0f} dB")

    y0 = top + mel_h
    if order is not None:                                       # the decoding order, rows low to high
        rows, cols = order.shape
        steps = max(1, int(order.max()) + 1)
        o = order.flip(0).cpu().numpy()
        idx = np.where(o >= 0, (o * 255 / max(1, steps - 1)).round(), 0).astype(np.int64)
        cells = np.where((o >= 0)[..., None], pal[idx], np.uint8(170))                    # (rows, cols, 3)
        y0 = top + mel_h + gap
        cell_h = order_h // rows
        xs = (np.arange(plot_w) * cols // plot_w)                                          # column of each pixel
        ys = np.arange(order_h) // cell_h
        img[y0:y0 + order_h, left:left + plot_w] = cells[ys][:, xs]
        for c in range(1, cols):                                                           # thin white cell lines
            img[y0:y0 + order_h, left + c * plot_w // cols] = 255
        for r in range(1, rows):
            img[y0 + r * cell_h, left:left + plot_w] = 255
        draw_text(img, left, y0 - CHAR_H - 8, "step at which each token was committed (token rows, low at the bottom)")
        for r in range(rows):
            draw_text(img, left - 10 - text_width(f"row {r}"), y0 + order_h - (r + 1) * cell_h + 5, f"row {r}")
        for y in range(order_h):
            img[y0 + y, bar_x:bar_x + 16] = pal[255 - int(y * 255 / (order_h - 1))]
        draw_text(img, bar_x + 22, y0, f"step {steps}")
        draw_text(img, bar_x + 22, y0 + order_h - 2 * CHAR_H - 6, "step 1")
        img[y0 + order_h - CHAR_H:y0 + order_h, bar_x:bar_x + 16] = 170
        draw_text(img, bar_x + 22, y0 + order_h - CHAR_H, "given")
        y0 += order_h

    seconds = frames * mel.HOP / mel.SR                         # the time axis under the lowest panel
    for t in time_ticks(seconds):
        x = left + int(round(t / seconds * plot_w))
        if x >= left + plot_w:
            continue
        img[y0:y0 + 6, x] = 0
        label = f"{t:g}"
        draw_text(img, max(0, x - text_width(label) // 2), y0 + 10, label)
    draw_text(img, left + plot_w - text_width("time (s)"), y0 + 12 + CHAR_H, "time (s)")
    return img


def save_figure(path: str, log_mel: torch.Tensor, order: torch.Tensor | None = None) -> None:
    write_bytes(path, png.png_bytes(figure(log_mel.float(), order)))


# ---------------------------------------------------------------------------------------------------
# The page: one <section class="frame"> per step, each a complete picture; a slider shows one at a time.
# ---------------------------------------------------------------------------------------------------

CELL = {"given": "k", "earlier": "p", "now": "n", "masked": "m"}   # class names of the grid's cells

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px auto;max-width:1140px;padding:0 8px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:6px 0}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd;z-index:2}
.controls audio{height:32px;vertical-align:middle}
.controls input[type=range]{width:520px;vertical-align:middle}
button{font-size:14px;padding:3px 14px}
table.settings td,table.nums td{padding:1px 10px 1px 0} table.nums{margin:4px 0 8px}
.fig{display:grid;grid-template-columns:80px 880px 170px;row-gap:4px}
.cap{grid-column:1 / -1;padding-left:80px;font-size:12px;color:#555;margin-top:6px}
.ylab{position:relative;font-size:12px;height:240px} .ylab span{position:absolute;right:4px;transform:translateY(50%)}
.rlab{font-size:12px;text-align:right;padding-right:4px} .rlab div{height:20px;line-height:20px}
img.mel{display:block;width:880px;height:240px;image-rendering:pixelated}
table.grid{border-collapse:collapse;table-layout:fixed;width:880px}
table.grid td{height:18px;padding:0;border:1px solid #fff}
td.k{background:#b8b8b8} td.p{background:#21918c} td.n{background:#ff7f0e} td.m{background:#f1f1f1}
td.m{background-image:repeating-linear-gradient(45deg,#ddd 0 2px,transparent 2px 6px)}
.xt{position:relative;height:20px;font-size:12px} .xt span{position:absolute;transform:translateX(-50%)}
.legend{font-size:12px;padding-left:10px}
.bar{width:16px;height:240px;background:linear-gradient(to top,GRADIENT)}
.sw{display:inline-block;width:14px;height:12px;margin-right:4px;vertical-align:middle}
"""

SCRIPT = """
const frames = Array.from(document.querySelectorAll('section.frame'));
const slider = document.getElementById('slider'), label = document.getElementById('steplabel');
const play = document.getElementById('play');
let timer = null;
function show(k) {
  k = Math.max(1, Math.min(frames.length, k));
  frames.forEach((f, i) => { f.hidden = (i !== k - 1); });
  slider.value = k; label.textContent = 'step ' + k + ' of ' + frames.length;
}
function fromHash() { const m = /step=(\\d+)/.exec(location.hash); show(m ? parseInt(m[1]) : 1); }
slider.addEventListener('input', () => { stop(); show(parseInt(slider.value)); });
function stop() { if (timer) { clearInterval(timer); timer = null; play.textContent = 'play'; } }
play.addEventListener('click', () => {
  if (timer) { stop(); return; }
  if (parseInt(slider.value) >= frames.length) show(1);
  play.textContent = 'pause';
  timer = setInterval(() => {
    const k = parseInt(slider.value) + 1;
    if (k > frames.length) stop(); else show(k);
  }, 900);
});
document.addEventListener('keydown', e => {
  if (e.key === 'ArrowRight') { stop(); show(parseInt(slider.value) + 1); }
  if (e.key === 'ArrowLeft') { stop(); show(parseInt(slider.value) - 1); }
});
window.addEventListener('hashchange', fromHash);
fromHash();
"""


def confidence(rec: dict, b: int) -> str:
    """The mean probability of the tokens committed at this step, or a dash if none were."""
    p = float(rec["confidence"][b])
    return f"{p:.3f}" if math.isfinite(p) else "&ndash;"


def grid_html(committed, masked, known, belief, order_so_far) -> str:
    """One step's token grid as a table: top row = highest token row, as in the spectrogram above it.
    Each cell carries its row, column, state and token id (hover for it)."""
    rows, cols = committed.shape
    out = [f'<table class="grid" data-rows="{rows}" data-cols="{cols}">']
    for r in reversed(range(rows)):
        out.append(f'<tr data-row="{r}">')
        for c in range(cols):
            if known[r, c]:
                state, tip = "given", "given by the input:"
            elif committed[r, c]:
                state, tip = "now", "committed at this step:"
            elif masked[r, c]:
                state, tip = "masked", "still masked; this step drew"
            else:
                state, tip = "earlier", f"committed at step {int(order_so_far[r, c]) + 1}:"
            out.append(f'<td class="{CELL[state]}" data-c="{c}" title="row {r}, column {c}: {tip} '
                       f'token {int(belief[r, c])}"></td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def axes_html(seconds: float) -> tuple[str, str]:
    """The frequency labels (left of the mel) and the time labels (under the grid), as positioned spans."""
    ylab = "".join(f'<span style="bottom:{100 * mel_bin_position(hz):.2f}%">{hz} Hz &mdash;</span>'
                   for hz in HZ_TICKS if 0 <= mel_bin_position(hz) <= 1)
    xt = "".join(f'<span style="left:{100 * t / seconds:.2f}%">{t:g}</span>' for t in time_ticks(seconds)
                 if t < seconds)
    return ylab, xt


def page_html(record: list[dict], b: int, rows: int, cols: int, belief_log_mels: torch.Tensor,
              final_wav: torch.Tensor, settings: dict, belief_wavs: torch.Tensor | None = None,
              title: str | None = None) -> str:
    """The whole page as a string.

    record: step_record of every step of specmaskgit.generate; b: which item of the batch;
    belief_log_mels (S, 80, F): the SpecVQGAN's decoding of each step's belief; belief_wavs (S, T) or None;
    final_wav (T,): the take's sound; settings: what made it (prompt, flags, model file), shown as a table;
    title: the page's heading (default: the prompt).
    """
    S = len(record)
    frames = belief_log_mels.shape[-1]
    seconds = frames * mel.HOP / mel.SR
    patch = frames // cols                                             # mel frames per token column
    pal = palette()
    ylab, xt = axes_html(seconds)
    gradient = ",".join(f"rgb({r},{g},{bl})" for r, g, bl in pal[::51])
    order_so_far = torch.full((rows, cols), -1, dtype=torch.long)
    row_labels = "".join(f"<div>row {r}</div>" for r in reversed(range(rows)))
    parts = []
    for s, rec in enumerate(record):
        committed = rec["committed"][b].view(rows, cols)
        masked = rec["masked"][b].view(rows, cols)
        known = rec["known"][b].view(rows, cols)
        belief = rec["belief"][b].view(rows, cols)
        grid = grid_html(committed, masked, known, belief, order_so_far)
        order_so_far[committed] = s
        img = data_uri("image/png", png.png_bytes(db_index(belief_log_mels[s]), pal))
        n_now = int(committed.sum())
        nums = (f'<table class="nums"><tr><td>tokens committed at this step: <b class="ncommitted">{n_now}</b></td>'
                f'<td>still masked after it: <b>{int(rec["n_masked"][b])}</b> of {int((~known).sum())} '
                f'({rec["schedule"]})</td></tr><tr><td>guidance scale t (Eq. 2): <b>{rec["cfg_scale"]:.3f}</b></td>'
                f'<td>Gumbel temperature t<sub>g</sub> (Eq. 3): <b>{rec["temperature"]:.3f}</b></td>'
                f'<td>mean confidence of the committed tokens: <b>{confidence(rec, b)}</b></td>'
                f'</tr></table>')
        sound = ""
        if belief_wavs is not None:
            sound = (f'<p>this step&rsquo;s belief as sound ({PAGE_SR} Hz, 8 bit): <audio controls preload="metadata" '
                     f'src="{data_uri("audio/wav", audio_io.wav_bytes(belief_wavs[s], PAGE_SR, "PCM_U8"))}"></audio></p>')
        parts.append(
            f'<section class="frame" id="step{s + 1}" data-step="{s + 1}">'
            f'<h2>step {s + 1} of {S}</h2>{nums}'
            f'<div class="fig"><div class="cap">the belief at this step, decoded by the SpecVQGAN: mel spectrogram '
            f'(frequency in Hz on the mel scale)</div>'
            f'<div class="ylab">{ylab}</div>'
            f'<div><img class="mel" alt="mel spectrogram of the belief at step {s + 1}" src="{img}"></div>'
            f'<div class="legend"><div style="display:flex;gap:6px"><div class="bar"></div>'
            f'<div style="display:flex;flex-direction:column;justify-content:space-between;height:240px">'
            f'<span>{mel.DB_MAX:.0f} dB</span><span>{(mel.DB_MAX + mel.DB_MIN) / 2:.0f} dB</span>'
            f'<span>{mel.DB_MIN:.0f} dB</span></div></div></div>'
            f'<div class="cap">the token grid: each cell is one token (16 mel bins x {patch} frames), '
            f'hover for its id</div>'
            f'<div class="rlab">{row_labels}</div><div>{grid}<div class="xt">{xt}</div>'
            f'<div style="text-align:right;font-size:12px">time (s)</div></div>'
            f'<div class="legend"><span class="sw" style="background:#ff7f0e"></span>committed now<br>'
            f'<span class="sw" style="background:#21918c"></span>committed earlier<br>'
            f'<span class="sw" style="background:#f1f1f1;border:1px solid #ccc"></span>still masked<br>'
            f'<span class="sw" style="background:#b8b8b8"></span>given (input)</div></div>{sound}</section>')
    table = "".join(f"<tr><td>{html.escape(str(k))}</td><td><b>{html.escape(str(v))}</b></td></tr>"
                    for k, v in settings.items())
    rows_note = ", ".join(f"row {r}: {lo:.0f}-{hi:.0f} Hz" for r, (lo, hi) in
                          ((r, row_band_hz(r)) for r in range(rows)))
    title = html.escape(title or str(settings.get("prompt", "SpecMaskGIT decoding")))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}: MaskGIT decoding</title>'
        f'<style>{STYLE.replace("GRADIENT", gradient)}</style></head><body>'
        f'<h1>MaskGIT decoding, step by step: {title}</h1>'
        f'<p>SpecMaskGIT fills a {rows} x {cols} grid of SpecVQGAN tokens in {S} steps (Sec. 3.4). At each '
        f'step it draws a token for every masked position at once, keeps the most confident and masks the '
        f'rest again. The spectrogram shows the model&rsquo;s <i>belief</i> at that step: the tokens committed '
        f'so far plus its current draw for every still-masked one, decoded by the SpecVQGAN. Each token '
        f'covers 16 mel bins x {patch} frames ({patch * mel.HOP / mel.SR * 1000:.0f} ms); {rows_note}. '
        f'What made it is listed at the end.</p>'
        f'<div class="controls">final sound: <audio controls src="{data_uri("audio/wav", audio_io.wav_bytes(final_wav))}">'
        f'</audio><br><button id="play" type="button">play</button> '
        f'<input id="slider" type="range" min="1" max="{S}" value="1" aria-label="sampling step"> '
        f'<b id="steplabel">step 1 of {S}</b> <small>(arrow keys step; open with #step=8 to start there)</small></div>'
        + "".join(parts) + f'<h2>What made this page</h2><table class="settings">{table}</table>'
        f"<script>{SCRIPT}</script></body></html>")


def write_bytes(path: str, data: bytes) -> None:
    """Atomically (a temporary file, then rename): a crash never leaves half a page or picture."""
    write_atomically(path, lambda f: f.write(data))


def write_page(path: str, page: str) -> None:
    write_bytes(path, page.encode("utf-8"))
