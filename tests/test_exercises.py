"""The README's nine exercises, each run from the README's own command at its smallest setting.

The commands are read out of the README's "## Exercises" section (every `python ...` span of an
exercise), so a command that rots there fails here. Only settings that make a run small are added: a
temporary --out, --steps, --n for evaluate.py's sets, and for the two training exercises the tiny model
flags tests/test_train.py uses. Each test then checks what the exercise tells the student to observe,
where that is cheap to check: file names, the decoding-order map, which tokens an inpainting or a
bandwidth extension may change, that --cfg 0 ignores the prompt, that a trained model carries the
ablated config and that the sampler follows it.
"""

import base64
import os
import re
import shlex
import shutil
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

from pictures import decoding_page
import evaluate
from evaluation import ablations
import mel
from ground import audio_io
import pipeline
import sample
import specmaskgit
import train
from ground.runtime import build_model, load_checkpoint
from conftest import TOY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
TINY_RUN = TOY[2:] + ["--steps", "2"]          # test_train's tiny models, 8 toy clips, two steps per stage


# ---------------------------------------------------------------------------------------------------
# Reading the exercises out of the README
# ---------------------------------------------------------------------------------------------------

def exercise(n: int) -> str:
    """The text of exercise n (from its number to the next one)."""
    with open(README, encoding="utf-8") as f:
        section = f.read().split("## Exercises", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^(\d+)\. ", section, flags=re.M)              # ['', '1', text, '2', text, ...]
    return dict(zip(parts[1::2], parts[2::2]))[str(n)]


def spans(n: int) -> list[str]:
    """Every `code span` of exercise n, whitespace collapsed (a span may wrap over two lines)."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", exercise(n))]


def command(n: int, script: str, k: int = 0) -> list[str]:
    """The k-th `python <script> ...` command of exercise n, as argv without "python <script>"."""
    found = [shlex.split(s)[2:] for s in spans(n) if s.startswith(f"python {script}")]
    assert len(found) > k, f"exercise {n} of the README has no command 'python {script} ...' any more"
    return found[k]


def span_flag(n: int, flag: str) -> list[str]:
    """A `--flag value` span of exercise n ("again with `--temperature 9`") as [flag, value]."""
    found = [s.split() for s in spans(n) if s.split()[0] == flag]
    assert found, f"exercise {n} of the README no longer mentions `{flag} ...`"
    return found[0]


def replaced(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with the value after `flag` replaced."""
    assert flag in argv
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


@pytest.fixture
def saved(monkeypatch):
    """What sample.py saved, by file name: (waveform, log-mel, decoding order), beside the real files."""
    calls = {}
    real = sample.save_outputs

    def spy(path_wav, wav, log_mel=None, order=None, png=False):
        calls[os.path.basename(path_wav)] = (wav.clone(), log_mel, None if order is None else order.clone())
        return real(path_wav, wav, log_mel, order, png)

    monkeypatch.setattr(sample, "save_outputs", spy)
    return calls


def run_sample(argv):
    assert sample.main(argv) == 0, argv


def committed_per_step(order: torch.Tensor, steps: int) -> list[int]:
    return [int((order == s).sum()) for s in range(steps)]


def schedule_commits(n_tokens: int, steps: int, kind: str) -> list[int]:
    """How many tokens step s commits: what stays masked before it minus what stays masked after it,
    with MaskGIT's clamp (every step but the last commits at least one and keeps at least one masked)."""
    left = [n_tokens]
    for s in range(steps):
        target = 0 if s == steps - 1 else specmaskgit.mask_schedule(s, steps, n_tokens, kind)
        left.append(0 if s == steps - 1 or left[-1] <= 1 else min(left[-1] - 1, max(1, target)))
    return [a - b for a, b in zip(left, left[1:])]


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])                          # (width, height)


def table_row(out: str, title: str, header: str) -> tuple[list[float], list[float]]:
    """The header numbers and the FAD row of the markdown table printed after `title`."""
    table = out.split(title, 1)[1]

    def cells(name):
        return [float(x) for x in re.search(rf"^\| {name} \|(.*)\|$", table, re.M).group(1).split("|")]
    return cells(header), cells("FAD")


def read_int16(path):
    x, sr = sf.read(path, dtype="int16")
    assert sr == mel.SR
    return x


# ---------------------------------------------------------------------------------------------------
# Exercises 1-5: the bundled demo model
# ---------------------------------------------------------------------------------------------------

def test_exercise_1_the_png_shows_the_mel_and_the_step_each_token_was_committed(tmp_path, saved):
    argv = command(1, "sample.py")
    run_sample(argv + ["--out", str(tmp_path)])                      # the default 16 steps: the point of it
    named = [s for s in spans(1) if s.endswith(".png")]              # "writes `samples/a_church_bell.png`"
    assert named and os.path.basename(named[0]) in os.listdir(tmp_path)
    stem = sample.slug(argv[0])
    assert sorted(os.listdir(tmp_path)) == [stem + ".png", stem + ".wav"]
    _, log_mel, order = saved[stem + ".wav"]
    rows, cols = order.shape
    assert (rows, cols) == (5, 16) and log_mel.shape == (80, 256)
    # the PNG: the 80 x 256 mel above the 5 x 16 order map, with axes and legends, at least 800 px wide
    width, height = png_size(tmp_path / (stem + ".png"))
    assert width >= 800 and (height, width) == decoding_page.figure(log_mel, order).shape[:2]
    # the order map: every token committed once, at 0..15, as many per step as the cosine schedule says
    assert order.min() == 0 and order.max() == 15
    commits = committed_per_step(order, 16)
    assert commits == schedule_commits(rows * cols, 16, "cosine")
    assert commits[0] <= 2 and sum(commits[8:]) > rows * cols / 2    # a few first; most in the second half
    # the README's full-size numbers: 265 -> 263 -> 259
    full = [int(x) for x in re.search(r"(\d+) -> (\d+) -> (\d+)", exercise(1)).groups()]
    assert full == [265] + [specmaskgit.mask_schedule(s, 16, 265) for s in (0, 1)]


def test_exercise_2_gumbel_temperature_changes_the_decoding_order(tmp_path, saved):
    cold = command(2, "sample.py") + ["--steps", "4"]
    hot = replaced(cold, *span_flag(2, "--temperature"))
    assert cold[cold.index("--temperature") + 1] == "0" and hot[hot.index("--temperature") + 1] == "9"
    n = int(cold[cold.index("--n") + 1])
    stem = sample.slug(cold[0])
    orders = {}
    for name, argv in (("cold", cold), ("hot", hot)):
        saved.clear()
        run_sample(argv + ["--out", str(tmp_path / name)])
        names = [f"{stem}_{k}" for k in range(1, n + 1)]
        assert sorted(os.listdir(tmp_path / name)) == sorted(x + e for x in names for e in (".png", ".wav"))
        orders[name] = torch.stack([saved[x + ".wav"][2] for x in names])          # (n, 5, 16)
        for order in orders[name]:                                    # the schedule holds at every temperature
            assert committed_per_step(order, 4) == schedule_commits(80, 4, "cosine")
    # the same seed draws the same tokens at the first step; only the Gumbel noise on the confidence
    # differs, so a different order is the temperature's doing
    assert not torch.equal(orders["cold"], orders["hot"])
    assert not torch.equal(orders["cold"] == 0, orders["hot"] == 0)  # already the first step's choice differs

    # `python evaluate.py --ablations --quick` prints FAD against the temperature. On the demo model that
    # sweep takes 18 s even with two clips per set, so here the command is only parsed (its flags must
    # still exist and mean "the FAD tables, small sets"); exercise 7's test runs the same tables on a tiny
    # model and reads this temperature table there.
    args = evaluate.parse_args(command(2, "evaluate.py"))
    assert args.ablations and args.quick and not args.judges and args.ckpt == pipeline.DEFAULT_CKPT


def test_exercise_3_cfg_0_ignores_the_prompt_and_cfg_3_does_not(tmp_path):
    argv = command(3, "sample.py") + ["--steps", "2"]
    assert argv[argv.index("--cfg") + 1] == "0"
    n = int(argv[argv.index("--n") + 1])
    other = ["a dog barking"] + argv[1:]                             # the same command, another prompt
    guided = replaced(argv, *span_flag(3, "--cfg"))
    for name, a in (("siren", argv), ("dog", other), ("guided", guided)):
        run_sample(a + ["--out", str(tmp_path / name)])
    for k in range(1, n + 1):
        siren = (tmp_path / "siren" / f"{sample.slug(argv[0])}_{k}.wav").read_bytes()
        assert siren == (tmp_path / "dog" / f"{sample.slug(other[0])}_{k}.wav").read_bytes()
        assert siren != (tmp_path / "guided" / f"{sample.slug(argv[0])}_{k}.wav").read_bytes()
    # the README points at the sampler's shortcut and at the test that proves it
    assert hasattr(specmaskgit, "guided_logits")
    name = next(s for s in spans(3) if s.startswith("test_"))
    with open(os.path.join(ROOT, "tests", "test_specmaskgit.py"), encoding="utf-8") as f:
        assert f"def {name}(" in f.read()


def in_repository(path: str) -> bool:
    return os.path.isfile(path) and os.path.abspath(path).startswith(os.path.join(ROOT, ""))


def with_repository_input(argv: list[str], flag: str, substitute: str) -> list[str]:
    """argv with the file after `flag` kept if the clone holds it, else replaced by `substitute` (a real
    recording from tests/data) and any --start/--end scaled from the README's file to the substitute's length."""
    path = argv[argv.index(flag) + 1]
    if in_repository(path):
        return argv
    argv = replaced(argv, flag, substitute)
    readme_seconds = 9.845                                            # the README's example clips (Sec. 4 length)
    scale = sf.info(substitute).duration / readme_seconds
    for f in ("--start", "--end"):
        if f in argv:
            argv = replaced(argv, f, f"{float(argv[argv.index(f) + 1]) * scale:.2f}")
    return argv


@pytest.fixture
def full_band_wav(full_band_clips, tmp_path):
    """The longest recording as the 22050 Hz 16-bit wav sample.py writes, so samples compare one to one."""
    path = str(tmp_path / "alarm-clock.wav")
    sf.write(path, audio_io.load_audio(full_band_clips[0]).numpy(), mel.SR, subtype="PCM_16")
    return path


def test_exercise_4_inpainting_changes_only_the_gaps_columns(full_band_wav, tmp_path, saved, monkeypatch):
    monkeypatch.chdir(ROOT)                                           # the README's path is relative to the clone
    argv = with_repository_input(command(4, "sample.py") + ["--steps", "2"], "--inpaint", full_band_wav)
    path = argv[argv.index("--inpaint") + 1]
    start, end = float(argv[argv.index("--start") + 1]), float(argv[argv.index("--end") + 1])
    prompt = [a for i, a in enumerate(argv) if not a.startswith("--") and not argv[i - 1].startswith("--")]
    assert os.path.isfile(path) and prompt
    run_sample(argv + ["--out", str(tmp_path / "prompted")])
    stem = os.path.splitext(os.path.basename(path))[0] + "_inpainted"
    assert sorted(os.listdir(tmp_path / "prompted")) == [stem + ".png", stem + ".wav"]

    # the decoding order: -1 (known) on every column that does not touch the gap, a step where it does
    x = read_int16(path)
    clip, col = 65536, 16 * mel.HOP                                   # the demo model's clip and token column
    lo, hi = int(start * mel.SR), int(end * mel.SR)
    offset = pipeline.clip_window(len(x), clip, lo, hi, col)
    assert offset % col == 0 and offset <= lo and hi <= offset + clip
    order = saved[stem + ".wav"][2]
    gap = [c for c in range(clip // col) if offset + c * col < hi and offset + (c + 1) * col > lo]
    known = [c for c in range(clip // col) if c not in gap]
    assert known and gap and known[0] < gap[0] < gap[-1] < known[-1]   # known columns on both sides of the gap
    assert (order[:, gap] >= 0).all() and (order[:, known] == -1).all()
    # the waveform: outside the model's window the input itself, sample for sample; the gap is new
    y = read_int16(tmp_path / "prompted" / (stem + ".wav"))
    assert len(y) == len(x)
    assert np.array_equal(y[:offset], x[:offset]) and np.array_equal(y[offset + clip:], x[offset + clip:])
    assert not np.array_equal(y[lo:hi], x[lo:hi])

    # "Try it without a prompt": unconditional, the same gap, another filling
    run_sample([a for a in argv if a not in prompt] + ["--out", str(tmp_path / "unconditional")])
    z = read_int16(tmp_path / "unconditional" / (stem + ".wav"))
    assert np.array_equal(z[:offset], x[:offset]) and not np.array_equal(z[lo:hi], y[lo:hi])


def test_exercise_5_bwe_fills_the_top_band_and_lfr_keeps_the_low_band(band_limited_clips, tmp_path, saved,
                                                                      monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = with_repository_input(command(5, "sample.py") + ["--steps", "2"], "--bwe", band_limited_clips[0])
    path = argv[argv.index("--bwe") + 1]
    lfr = argv + span_flag(5, "--lfr")
    run_sample(argv + ["--out", str(tmp_path)])
    run_sample(lfr + ["--out", str(tmp_path)])
    stem = os.path.splitext(os.path.basename(path))[0]
    assert sorted(os.listdir(tmp_path)) == sorted(f"{stem}_{s}.{e}" for s in ("bwe", "bwe_lfr") for e in ("png", "wav"))
    order = saved[f"{stem}_bwe.wav"][2]
    assert (order[:-1] == -1).all() and (order[-1] >= 0).all()      # only the top token row is generated

    x = audio_io.load_audio(path)
    # the waveforms as sample.py made them: the files are clipped to [-1, 1], and where a generated clip
    # peaks above 1 the clipping spreads distortion over every band, in one file and not the other
    y, z = (saved[f"{stem}_{s}.wav"][0].reshape(-1).float() for s in ("bwe", "bwe_lfr"))
    assert len(x) == len(y) == len(z)
    # the top mel rows (bins 64-79, above ~4.3 kHz) gain energy: their mean magnitude rises by over 10 dB
    def top(wav):
        return mel.mel_spectrogram(wav)[64:].exp().mean()
    assert 20 * torch.log10(top(y) / top(x)) > 10
    # LFR: window by window, below the cut-off the input's own spectrum (up to 16-bit rounding), above
    # it the generated one (the same seed generates the same top band with and without --lfr)
    clip = 65536
    hz = np.fft.rfftfreq(clip, 1 / mel.SR)
    low, high = (hz > 0) & (hz < pipeline.BWE_CUTOFF_HZ - 50), hz > pipeline.BWE_CUTOFF_HZ + 50
    rounding = clip * (1 / 32768) ** 2 / 12                            # per-bin energy of 16-bit rounding noise
    for offset in range(0, len(x) - clip + 1, clip):
        fx, fy, fz = (np.fft.rfft(w[offset:offset + clip].numpy()) for w in (x, y, z))
        assert (np.abs(fz[low] - fx[low]) ** 2).sum() < 1e-4 * (np.abs(fx[low]) ** 2).sum() + 10 * low.sum() * rounding
        assert (np.abs(fz[high] - fy[high]) ** 2).sum() < 1e-2 * (np.abs(fy[high]) ** 2).sum()


# ---------------------------------------------------------------------------------------------------
# Exercises 6-7: after one (tiny) toy training run
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Exercise 6's `python train.py --data toy --stage all`, run in a fresh folder so that its relative
    runs/toy is that folder's; tiny models, two steps per stage."""
    home = tmp_path_factory.mktemp("exercises")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        assert train.main(command(6, "train.py", 0) + TINY_RUN) == 0
    finally:
        os.chdir(cwd)
    return home


def ablation_run(runs, monkeypatch, argv, name) -> dict:
    """Copy runs/toy to runs/<name> (as exercise 6 says) and run the ablation's train.py command there."""
    monkeypatch.chdir(runs)
    src = [s for s in spans(6) if s.startswith("runs/") and "/" not in s[5:]][0]     # `runs/toy`
    shutil.copytree(src, f"runs/{name}")
    argv = [a.replace("runs/nocm", f"runs/{name}") for a in argv]
    assert train.main(argv + TINY_RUN) == 0
    bundle = load_checkpoint(argv[argv.index("--bundle") + 1], "bundle")
    assert load_checkpoint(f"runs/{name}/transformer.pt", "transformer")["config"] == bundle["transformer"]["config"]
    return bundle


def masked_embedding(transformer, cond):
    """What the transformer's input shows at the masked positions of an all-masked grid, for `cond`."""
    c = transformer.cfg
    tokens = torch.zeros(1, c.rows, c.cols, dtype=torch.long)
    with torch.no_grad():
        return transformer.embed(tokens, cond, torch.ones_like(tokens, dtype=torch.bool))[:, :c.rows * c.cols]


def test_exercise_6_without_the_conditional_mask_and_without_cfg_training(runs, monkeypatch, capsys):
    argv = command(6, "train.py", 1)
    assert argv[argv.index("--transformer.conditional_mask") + 1] == "false"
    bundle = ablation_run(runs, monkeypatch, argv, "nocm")
    assert bundle["transformer"]["config"]["conditional_mask"] is False
    toy = load_checkpoint("runs/toy/transformer.pt", "transformer")
    assert toy["config"]["conditional_mask"] is True                 # the copied-from run is untouched
    # the ablation reached the model: masked positions show [M] whatever the condition, not the CLAP vector
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, toy["config"]["cond_dim"], generator=g)
    nocm, cm = (build_model(specmaskgit.SpecMaskGIT, specmaskgit.Config, c, "transformer") for c in (bundle["transformer"], toy))
    assert torch.equal(masked_embedding(nocm, a), masked_embedding(nocm, b))
    assert not torch.allclose(masked_embedding(cm, a), masked_embedding(cm, b))

    # `python evaluate.py --ckpt runs/nocm/model.pt --quick`, with two clips per FAD set and one per kind
    capsys.readouterr()
    assert evaluate.main(command(6, "evaluate.py") + ["--n", "2", "--per-kind", "1"]) == 0
    out = capsys.readouterr().out
    assert "evaluating runs/nocm/model.pt" in out and "### The three judges" in out
    row = re.search(r"^\| SpecMaskGIT, CFG 3 with the linear ramp \| 16 \| ([0-9.]+) \|", out, re.M)
    assert row and np.isfinite(float(row.group(1)))

    # "Do the same with `--transformer.cfg_dropout 0`"
    flag, value = span_flag(6, "--transformer.cfg_dropout")
    i = argv.index("--transformer.conditional_mask")
    nocfg = argv[:i] + argv[i + 2:] + [flag, value]                    # this ablation instead of the other
    cfg = ablation_run(runs, monkeypatch, nocfg, "nocfg")["transformer"]["config"]
    assert cfg["cfg_dropout"] == 0.0 and cfg["conditional_mask"] is True


@pytest.mark.parametrize("kind", ["linear", "sqrt"])
def test_exercise_7_the_sampler_follows_the_trained_mask_schedule(runs, monkeypatch, capsys, saved, kind):
    flag, value = span_flag(7, "--transformer.mask_schedule")
    assert value == "linear" and (kind == value or f"`{kind}`" in exercise(7))     # "(or `sqrt`)"
    bundle = ablation_run(runs, monkeypatch, command(6, "train.py", 1) + [flag, kind], kind)
    cfg = bundle["transformer"]["config"]
    assert cfg["mask_schedule"] == kind
    n_tokens = cfg["rows"] * cfg["cols"]
    for steps in (4, 16):                                             # "Compare ... at --steps 4 and --steps 16"
        assert ["--steps", str(steps)] in [s.split() for s in spans(7)]
        saved.clear()
        run_sample(["rain on a roof", "--ckpt", f"runs/{kind}/model.pt", "--steps", str(steps),
                    "--out", f"samples_{kind}_{steps}"])
        commits = committed_per_step(saved["rain_on_a_roof.wav"][2], steps)
        assert commits == schedule_commits(n_tokens, steps, kind) != schedule_commits(n_tokens, steps, "cosine")
    if kind == "linear":
        # FAD at 4 and 16 steps: evaluate.py's Fig. 7 tables, with exercise 2's command on this model
        capsys.readouterr()
        assert evaluate.main(command(2, "evaluate.py") + ["--ckpt", f"runs/{kind}/model.pt", "--n", "2"]) == 0
        out = capsys.readouterr().out
        steps, fad = table_row(out, "FAD vs number of iterations", "Num_iter")
        assert {4, 16} <= set(steps) and len(fad) == len(steps) and all(np.isfinite(fad))
        temperatures, fad = table_row(out, "FAD vs Gumbel temperature", "Gumbel temperature")   # exercise 2's
        assert temperatures == list(ablations.TEMPERATURES) and {0, 9} <= set(temperatures)
        assert len(fad) == len(temperatures) and all(np.isfinite(fad)) and min(fad) >= 0


# ---------------------------------------------------------------------------------------------------
# Exercise 8: the decoding page of the bundled demo model
# ---------------------------------------------------------------------------------------------------

def page_frames(path) -> list[str]:
    """The page's frames (one <section class="frame"> per sampling step), as HTML text."""
    text = open(path, encoding="utf-8").read()
    return [f.split("</section>", 1)[0] for f in text.split('<section class="frame"')[1:]]


def belief_db(frame: str) -> np.ndarray:
    """(80, F) dB of a frame's belief mel, read back from its palette PNG (decoding_page.db_index)."""
    data = base64.b64decode(re.search(r'<img class="mel"[^>]*src="data:image/png;base64,([^"]+)"', frame).group(1))
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):                                            # PNG chunks: length, kind, data, crc
        n, kind = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
        idat += data[pos + 8:pos + 8 + n] if kind == b"IDAT" else b""
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)[:, 1:]   # filter byte 0 each row
    return mel.DB_MIN + rows[::-1].astype(np.float64) / 255 * (mel.DB_MAX - mel.DB_MIN)


def test_exercise_8_the_page_shows_the_belief_settle_step_by_step(tmp_path):
    steps = 6
    argv = command(8, "sample.py") + ["--steps", str(steps)]
    assert "--html" in argv
    named = [s for s in spans(8) if s.endswith(".html")]              # "writes `samples/a_church_bell.html`"
    stem = sample.slug(argv[0])
    assert named and os.path.basename(named[0]) == stem + ".html"
    cold_flag = span_flag(8, "--temperature")
    assert cold_flag == ["--temperature", "0"]
    frames = {}
    for name, a in (("hot", argv), ("cold", argv + cold_flag)):
        run_sample(a + ["--out", str(tmp_path / name)])
        assert sorted(os.listdir(tmp_path / name)) == [stem + ".html", stem + ".wav"]
        frames[name] = page_frames(tmp_path / name / (stem + ".html"))
        assert len(frames[name]) == steps                               # one frame per step
    # the belief settles: step 1 (guidance 0, everything drawn) is farther from the final sound than the
    # middle step, and the last step's belief is the final grid
    db = [belief_db(f) for f in frames["hot"]]
    far = [float(np.abs(d - db[-1]).mean()) for d in db]
    assert far[0] > far[steps // 2] > 0 and far[-1] == 0
    # each frame shows Eq. 3's temperature: annealed from 1.5, or 0 throughout with --temperature 0
    shown = {k: [float(re.search(r"Gumbel temperature.*?<b>([\d.]+)</b>", f).group(1)) for f in v]
             for k, v in frames.items()}
    assert shown["hot"] == [round(1.5 * (1 - (s + 1) / steps), 3) for s in range(steps)]
    assert shown["cold"] == [0.0] * steps
    # and another order: the cells committed at each step differ between the two
    def now(f):
        return re.findall(r'<td class="n" data-c="(\d+)"', f)
    assert [now(f) for f in frames["hot"]] != [now(f) for f in frames["cold"]]


# ---------------------------------------------------------------------------------------------------
# Exercise 9: MAGNeT's annealed guidance against SpecMaskGIT's ramp
# ---------------------------------------------------------------------------------------------------

def test_exercise_9_magnet_guidance_falls_from_10_to_1_and_the_ramp_rises(tmp_path, monkeypatch):
    import magnet
    scales = []
    real = magnet.generate

    def spy(*args, on_step=None, **kwargs):
        def seen(info):
            scales[-1].append(info["cfg_scale"])
            if on_step is not None:
                on_step(info)
        scales.append([])
        return real(*args, on_step=seen, **kwargs)

    monkeypatch.setattr(magnet, "generate", spy)
    annealed = command(9, "sample.py") + ["--row-steps", "4"]
    rising = replaced(annealed, *span_flag(9, "--guidance"))
    assert annealed[annealed.index("--guidance") + 1] == "10,1" and rising[rising.index("--guidance") + 1] == "0,3"
    for name, argv in (("annealed", annealed), ("rising", rising)):
        run_sample(argv + ["--out", str(tmp_path / name)])
        stem = sample.slug(argv[0])
        assert sorted(os.listdir(tmp_path / name)) == [stem + ".html", stem + ".wav"]
    falling, ramp = scales
    # gamma (the share still masked) is 1 at the first step and shrinks: lambda = gamma high + (1 - gamma) low
    assert falling[0] == 10 and ramp[0] == 0
    assert all(a > b for a, b in zip(falling, falling[1:])) and all(a < b for a, b in zip(ramp, ramp[1:]))
    assert 1 <= falling[-1] < 10 and 0 < ramp[-1] <= 3
