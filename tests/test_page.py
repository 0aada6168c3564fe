"""pictures/decoding_page.py through sample.py --html and --png: the page of the decoding steps and the labelled PNG.

The page is read back with html.parser, as a browser would, and checked against what generate
recorded: one frame per step, each with the model's grid, the cells committed at that step exactly
those of generate's decoding order, the given cells exactly the caller's known tokens, sounds that
decode, and nothing loaded from outside the file. Tiny untrained models (tests/conftest.py's bundle).
"""

import base64
import dataclasses
import io
import os
from html.parser import HTMLParser

import numpy as np
import pytest
import soundfile as sf
import torch

import clap
from pictures import decoding_page
import mel
import pipeline
import sample
import specmaskgit
from data import toyworld
import vocoder
import vqgan
from ground.runtime import save_checkpoint
from conftest import CLIP

STEPS = 4


class Page(HTMLParser):
    """What a browser would load and show: every src/href, the frames and their grids' cells."""

    def __init__(self, text: str):
        super().__init__()
        self.urls, self.tags, self.frames, self.audio = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "data", "poster", "srcset", "action") and v]
        if tag == "section" and "frame" in a.get("class", ""):
            self.frames.append({"step": int(a["data-step"]), "grids": [], "cells": {}, "imgs": [], "audio": []})
        elif not self.frames:
            if tag == "audio":
                self.audio.append(a["src"])
        elif tag == "table" and a.get("class") == "grid":
            self.frames[-1]["grids"].append((int(a["data-rows"]), int(a["data-cols"])))
        elif tag == "tr" and "data-row" in a:
            self.row = int(a["data-row"])
        elif tag == "td" and "data-c" in a:
            self.frames[-1]["cells"][(self.row, int(a["data-c"]))] = a["class"]
        elif tag == "img":
            self.frames[-1]["imgs"].append(a["src"])
        elif tag == "audio":
            self.frames[-1]["audio"].append(a["src"])


def cells_of(frame, state: str, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) bool: the cells of `frame` drawn as `state` (given / earlier / now / masked)."""
    cls = decoding_page.CELL[state]
    return torch.tensor([[frame["cells"][(r, c)] == cls for c in range(cols)] for r in range(rows)])


def decoded(uri: str, kind: str):
    assert uri.startswith(f"data:{kind};base64,")
    return base64.b64decode(uri.split(",", 1)[1], validate=True)


@pytest.fixture
def orders(monkeypatch):
    """The decoding order generate returned for each take sample.py saved (by file name)."""
    got, real = {}, sample.save_outputs

    def spy(path_wav, wav, log_mel=None, order=None, png=False):
        got[os.path.basename(path_wav)] = order.clone()
        return real(path_wav, wav, log_mel, order, png)

    monkeypatch.setattr(sample, "save_outputs", spy)
    return got


def read_page(path) -> tuple[str, Page]:
    text = open(path, encoding="utf-8").read()
    return text, Page(text)


def check_self_contained(text: str, page: Page) -> None:
    """Nothing outside the file: every src is a data: URI, no link/iframe/object, no url() or import."""
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert not any(scheme in text for scheme in ("http:", "https:", "file:", "ftp:"))
    assert not {"link", "iframe", "object", "embed", "base"} & set(page.tags)
    assert "url(" not in text and "@import" not in text and "fetch(" not in text and "XMLHttpRequest" not in text


def check_frames_follow_the_order(page: Page, order: torch.Tensor, known: torch.Tensor, steps: int) -> None:
    """One frame per step; at frame s the cells committed now are order == s, earlier ones order < s,
    still masked order > s, and given ones the caller's known tokens (order == -1)."""
    rows, cols = order.shape
    assert [f["step"] for f in page.frames] == list(range(1, steps + 1))
    for s, frame in enumerate(page.frames):
        assert frame["grids"] == [(rows, cols)] and len(frame["cells"]) == rows * cols
        assert torch.equal(cells_of(frame, "now", rows, cols), order == s)
        assert torch.equal(cells_of(frame, "earlier", rows, cols), (order >= 0) & (order < s))
        assert torch.equal(cells_of(frame, "masked", rows, cols), order > s)
        assert torch.equal(cells_of(frame, "given", rows, cols), known)


# ---------------------------------------------------------------------------------------------------
# Text to audio
# ---------------------------------------------------------------------------------------------------

def test_the_page_holds_one_frame_per_step_that_follows_generates_order(bundle, tmp_path, orders):  # noqa: F811
    argv = ["a church bell", "--html", "--ckpt", bundle, "--steps", str(STEPS), "--out", str(tmp_path)]
    assert sample.main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["a_church_bell.html", "a_church_bell.wav"]
    text, page = read_page(tmp_path / "a_church_bell.html")
    check_self_contained(text, page)
    order = orders["a_church_bell.wav"]                                       # (5, 8)
    assert order.shape == (5, CLIP // 4096)
    check_frames_follow_the_order(page, order, torch.zeros_like(order, dtype=torch.bool), STEPS)
    # each frame: the belief's mel as a PNG (80 rows, one column per frame) and its sound
    for frame in page.frames:
        png = decoded(frame["imgs"][0], "image/png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == np.array([CLIP // mel.HOP, 80], ">u4").tobytes()
        x, sr = sf.read(io.BytesIO(decoded(frame["audio"][0], "audio/wav")))
        assert sr == decoding_page.PAGE_SR and len(x) == CLIP * decoding_page.PAGE_SR // mel.SR
    # the final sound is the written wav, sample for sample
    x, sr = sf.read(io.BytesIO(decoded(page.audio[0], "audio/wav")), dtype="int16")
    y, _ = sf.read(tmp_path / "a_church_bell.wav", dtype="int16")
    assert sr == mel.SR and np.array_equal(x, y)
    assert "a church bell" in text and os.path.basename(bundle) in text and "Eq. 2" in text
    assert os.path.dirname(os.path.abspath(bundle)) not in text                 # no local path on a shared page


def test_the_pages_numbers_are_generates_record(pipe):  # noqa: F811
    record = []
    wav, _, order, _ = pipeline.text_to_audio(pipe, ["rain on a roof", "a dog barking"], steps=STEPS, seed=3,
                                            verbose=False, record=record)
    settings = {"prompt": "a dog barking"}
    page_text = decoding_page.page_html(record, 1, 5, CLIP // 4096, torch.zeros(STEPS, 80, CLIP // mel.HOP),
                                        wav[1], settings)
    page = Page(page_text)
    check_frames_follow_the_order(page, order[1], torch.zeros_like(order[1], dtype=torch.bool), STEPS)
    for s, rec in enumerate(record):                                          # numbers shown = numbers recorded
        frame = page_text.split(f'data-step="{s + 1}"', 1)[1].split("</section>", 1)[0]
        assert f"still masked after it: <b>{int(rec['n_masked'][1])}</b>" in frame
        assert f"<b>{rec['cfg_scale']:.3f}</b>" in frame and f"<b>{rec['temperature']:.3f}</b>" in frame
        assert f"<b>{decoding_page.confidence(rec, 1)}</b>" in frame
    assert record[0]["cfg_scale"] == 0 and record[-1]["cfg_scale"] == 3.0       # Eq. 2's ramp, shown as recorded


def test_the_page_names_the_models_mask_schedule(pipe):  # noqa: F811
    record = []
    pipeline.text_to_audio(pipe, ["rain on a roof"], steps=STEPS, verbose=False, record=record)
    assert record[0]["schedule"] == f"{pipe.transformer.cfg.mask_schedule} schedule"
    record[0]["schedule"] = "sqrt schedule"                                  # as a model of exercise 7 records it
    page_text = decoding_page.page_html(record[:1], 0, 5, CLIP // 4096, torch.zeros(1, 80, CLIP // mel.HOP),
                                        torch.zeros(CLIP), {"prompt": "rain on a roof"})
    assert "(sqrt schedule)" in page_text and "cosine" not in page_text


# ---------------------------------------------------------------------------------------------------
# Inpainting and bandwidth extension: the given tokens are marked as given, never committed
# ---------------------------------------------------------------------------------------------------

def test_an_inpainting_page_marks_the_tokens_outside_the_gap_as_given(bundle, tmp_path, orders):  # noqa: F811
    sf.write(tmp_path / "in.wav", 0.1 * np.random.default_rng(0).standard_normal(50000), mel.SR)
    assert sample.main(["--inpaint", str(tmp_path / "in.wav"), "--start", "0.5", "--end", "0.9", "--html",
                        "--ckpt", bundle, "--steps", str(STEPS), "--out", str(tmp_path / "o")]) == 0
    text, page = read_page(tmp_path / "o" / "in_inpainted.html")
    check_self_contained(text, page)
    order = orders["in_inpainted.wav"]
    known = order == -1
    assert 0 < int((~known).sum()) < known.numel() and torch.equal(known.all(0), known.any(0))  # whole columns
    check_frames_follow_the_order(page, order, known, STEPS)


def test_a_bwe_page_regenerates_only_the_top_row(bundle, tmp_path, orders):  # noqa: F811
    sf.write(tmp_path / "low.wav", 0.1 * np.random.default_rng(1).standard_normal(2 * CLIP + 5000), mel.SR)
    assert sample.main(["--bwe", str(tmp_path / "low.wav"), "--html", "--ckpt", bundle, "--steps", str(STEPS),
                        "--out", str(tmp_path / "o")]) == 0
    text, page = read_page(tmp_path / "o" / "low_bwe.html")
    check_self_contained(text, page)
    order = orders["low_bwe.wav"]
    known = torch.ones_like(order, dtype=torch.bool)
    known[-1] = False                                                         # the top row: mel bins 64-79
    check_frames_follow_the_order(page, order, known, STEPS)
    assert f"{2 * CLIP / mel.SR:.2f}-" in text                                # it says which window it shows


# ---------------------------------------------------------------------------------------------------
# The full-size grid (5 x 53, 9.85 s) with tiny random weights: the page stays under 10 MB
# ---------------------------------------------------------------------------------------------------

def test_a_full_size_page_has_the_5_x_53_grid_and_stays_under_10_mb(tmp_path, orders):
    torch.manual_seed(0)
    vq_cfg = vqgan.Config(base_channels=4, channel_mult=(1, 2, 4, 8, 8), n_res_blocks=1, dec_res_blocks=1,
                          norm_groups=4, z_channels=16, n_codes=32, code_dim=16, disc_channels=4, disc_layers=2)
    voc_cfg = dataclasses.replace(vocoder.PRESETS["tiny"], upsample_initial_channel=16, mpd_width=2, msd_width=16)
    clap_cfg = clap.Config(audio_channels=(4, 8, 8, 8), audio_hidden=16, text_width=16, text_layers=1)
    tr_cfg = specmaskgit.Config(n_layers=1, width=32, n_heads=2, mlp=64, n_codes=32, rows=5, cols=53)
    b = {"stage": "bundle", "num_samples": mel.CLIP_SAMPLES, "data": "toy",
         "vqgan": vqgan.Trainer(vq_cfg).checkpoint(), "vocoder": vocoder.Trainer(voc_cfg).checkpoint(),
         "clap": clap.Trainer(clap_cfg, vocab=clap.build_vocab(toyworld.toy_caption_phrases())).checkpoint(),
         "transformer": specmaskgit.Trainer(tr_cfg).checkpoint()}
    save_checkpoint(b, str(tmp_path / "full.pt"))
    assert sample.main(["rain on a roof", "--html", "--ckpt", str(tmp_path / "full.pt"), "--out", str(tmp_path)]) == 0
    text, page = read_page(tmp_path / "rain_on_a_roof.html")
    check_self_contained(text, page)
    check_frames_follow_the_order(page, orders["rain_on_a_roof.wav"], torch.zeros(5, 53, dtype=torch.bool), 16)
    assert os.path.getsize(tmp_path / "rain_on_a_roof.html") < 10e6


# ---------------------------------------------------------------------------------------------------
# The labelled PNG
# ---------------------------------------------------------------------------------------------------

def test_the_png_is_at_least_800_px_wide_with_the_mel_upright_and_a_legend(tmp_path):
    log_mel = torch.full((80, 256), -11.0)                                    # quiet: below -80 dB
    log_mel[:10] = 2.0                                                        # loud lowest bins: 17 dB
    order = torch.arange(80).view(5, 16) % 4
    order[:, :3] = -1                                                         # given columns
    decoding_page.save_figure(str(tmp_path / "f.png"), log_mel, order)
    img = decoding_page.figure(log_mel, order)
    data = (tmp_path / "f.png").read_bytes()
    w, h = np.frombuffer(data[16:24], ">u4")
    assert (h, w) == img.shape[:2] and w >= 800
    pal = decoding_page.palette()
    column = img[:, 76 + 500]                                                 # one column through the mel
    loud = pal[decoding_page.db_index(log_mel)[79, 0]]                        # lowest bin, drawn at the bottom
    quiet = pal[0]
    rows_loud = np.where((column == loud).all(1))[0]
    rows_quiet = np.where((column == quiet).all(1))[0]
    assert len(rows_loud) == 30 and len(rows_quiet) == 210                    # 10 and 70 bins, 3 px each
    assert rows_loud.min() > rows_quiet.max()                                 # low frequencies at the bottom
    grey = (img == 170).all(-1)                                               # given tokens are grey
    assert grey[:, 76:76 + 3 * 64].any() and not grey[:, 76 + 4 * 64:76 + 16 * 64].any()
    assert (img[:, :70] == 0).all(-1).sum() > 100                             # tick labels in the left margin
