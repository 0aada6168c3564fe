"""clap.py: the shared interface, words and vocabulary, the contrastive loss against an explicit sum,
checkpoints, the LAION-CLAP wrapper (with a stand-in module) and a TinyCLAP that learns the toy world."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clap
from formats import clap_format
from ground import runtime
import mel
from ground import runtime
from ground.runtime import UserError, save_checkpoint

VOCAB = clap.build_vocab(["a dog barking", "rain on a roof", "a high whistle", "a low rumble"])


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return clap.TinyCLAP(clap.PRESETS["tiny"], VOCAB).eval()


def tone(freq, sr, seconds=0.5, amp=0.5):
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def peak_hz(wav, sr):
    spec = np.abs(np.fft.rfft(wav.double().numpy() * np.hanning(len(wav))))
    return np.argmax(spec) * sr / len(wav)


# --- the interface ---------------------------------------------------------------------------------

def test_embeddings_are_unit_rows_of_512():
    m = tiny_model()
    a = m.embed_audio(0.1 * torch.randn(3, 8192))
    t = m.embed_text(["a dog barking", "rain on a roof"])
    one = m.embed_audio(0.1 * torch.randn(8192))                  # a single clip (T,) becomes one row
    for e, rows in [(a, 3), (t, 2), (one, 1)]:
        assert e.shape == (rows, 512) and e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=1), torch.ones(rows))


def test_tiny_config_fits_the_demo_bundle():
    n = runtime.count_parameters(clap.TinyCLAP(clap.PRESETS["tiny"], [f"w{i}" for i in range(300)]))
    assert n < 700_000                                             # < 2.8 MB in fp32
    assert clap.PRESETS["full"].embed_dim == clap.PRESETS["tiny"].embed_dim == 512


def test_words_are_lower_case_without_punctuation():
    assert clap.words_of("A Dog barks, twice!  (loudly)") == ["a", "dog", "barks", "twice", "loudly"]
    assert clap.build_vocab(["Rain, rain.", "a roof"]) == ["a", "rain", "roof"]
    assert clap.build_vocab(["rain rain", "a roof"], min_count=2) == ["rain"]


def test_words_in_any_script_stay_whole():
    assert clap.words_of("Café au lait") == ["café", "au", "lait"]
    assert clap.words_of("cafe\u0301") == ["café"]                       # a combining accent: the same word
    assert clap.words_of("Ñandú, running!") == ["ñandú", "running"]
    assert clap.words_of("狗在叫 كلب ينبح") == ["狗在叫", "كلب", "ينبح"]
    m = clap.TinyCLAP(clap.PRESETS["tiny"], clap.build_vocab(["rain and a dog"])).eval()
    assert m.unknown_words("ñandú") == ["ñandú"]                               # not silently the known "and"
    with pytest.raises(ValueError, match="vocabulary"):
        m.embed_text(["ñandú"])
    with pytest.raises(ValueError, match="vocabulary"):
        m.embed_text(["狗在叫"])


def test_unknown_words_are_reported_and_ignored():
    m = tiny_model()
    e, unknown = m.embed_text(["a dog barking loudly, LOUDLY", "rain on a roof"], return_unknown=True)
    assert unknown == [["loudly"], []]
    assert m.unknown_words("a purple dog") == ["purple"]
    torch.testing.assert_close(e[0], m.embed_text(["a dog barking"])[0])   # ignored = as if absent


@pytest.mark.parametrize("prompt", ["", "   ", "?!", "xyzzy plugh"])
def test_prompt_without_a_known_word_is_refused(prompt):
    with pytest.raises(ValueError, match="prompt|vocabulary"):
        tiny_model().embed_text([prompt])


# --- the loss --------------------------------------------------------------------------------------

def test_contrastive_loss_equals_the_explicit_sum():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    s = 1 / 0.07
    # CLIP: -1/2 [ mean_i log softmax_j(s a_i.t_j)[i] + mean_j log softmax_i(s a_i.t_j)[j] ], term by term
    a2t = -sum(s * a[i] @ t[i] - math.log(sum(math.exp(s * a[i] @ t[j]) for j in range(5))) for i in range(5)) / 5
    t2a = -sum(s * a[j] @ t[j] - math.log(sum(math.exp(s * a[i] @ t[j]) for i in range(5))) for j in range(5)) / 5
    assert clap.contrastive_loss(a, t, scale).item() == pytest.approx(float((a2t + t2a) / 2), rel=1e-12)


def test_contrastive_loss_with_repeated_captions_spreads_the_target():
    torch.manual_seed(1)
    a = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    pos = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    logits = 3.0 * a @ t.T
    logp_rows, logp_cols = logits.log_softmax(1), logits.log_softmax(0)
    # each row's (and column's) target is uniform over its positives: -sum_j q_ij log p_ij
    rows = -sum(logp_rows[i, j] / pos[i].sum() for i in range(4) for j in range(4) if pos[i, j]) / 4
    cols = -sum(logp_cols[i, j] / pos[:, j].sum() for j in range(4) for i in range(4) if pos[i, j]) / 4
    got = clap.contrastive_loss(a, t, torch.tensor(math.log(3.0), dtype=torch.float64), pos)
    assert got.item() == pytest.approx(((rows + cols) / 2).item(), rel=1e-12)
    # with only the diagonal marked it is CLIP's loss
    eye = torch.eye(4, dtype=torch.bool)
    assert clap.contrastive_loss(a, t, torch.tensor(1.0), eye).item() == pytest.approx(
        clap.contrastive_loss(a, t, torch.tensor(1.0)).item(), rel=1e-12)


def test_temperature_is_learned_and_clamped_like_clip():
    tr = clap.Trainer(clap.PRESETS["tiny"], vocab=VOCAB, lr=1e-3)
    with torch.no_grad():
        tr.model.logit_scale.fill_(math.log(500.0))               # beyond CLIP's ceiling of 100
    batch = {"wav": 0.1 * torch.randn(4, 4096), "caption": ["a dog barking", "rain on a roof"] * 2}
    metrics = tr.step(batch, 0)
    assert tr.model.logit_scale.requires_grad
    assert metrics["scale"] <= 100.0 + 1e-3 and math.isfinite(metrics["loss"])


def test_modality_gap_numbers():
    a = torch.eye(4)
    t = F.normalize(torch.eye(4) + 1.0, dim=1)                     # every text shifted along (1, 1, 1, 1)
    g = clap.modality_gap(a, t)
    s = 1 / math.sqrt(7)                                           # rows of eye + 1 are (2, 1, 1, 1) / sqrt(7)
    assert g["matching_cos"] == pytest.approx(2 * s) and g["random_cos"] == pytest.approx(s)
    assert g["centroid_gap"] == pytest.approx((torch.full((4,), 0.25) - torch.full((4,), 5 * s / 4)).norm().item())


def test_centering_removes_each_modality_mean():
    # An untrained encoder puts all its outputs in one narrow cone (Liang et al. 2022): high cosine
    # between unrelated inputs. Subtracting the modality's mean (fit over the same set) removes that.
    m = tiny_model()
    wav = 0.1 * torch.randn(16, 4096)
    captions = ["a dog barking", "rain on a roof", "a high whistle", "a low rumble"] * 4
    raw = m.embed_audio(wav, center=False)
    clap.fit_centering(m, wav, captions)
    torch.testing.assert_close(m.audio_mean, raw.mean(0))
    centered = m.embed_audio(wav)
    torch.testing.assert_close(centered, F.normalize(raw - raw.mean(0), dim=1))
    off = ~torch.eye(16, dtype=torch.bool)
    assert (raw @ raw.T)[off].mean() > 0.5 > abs((centered @ centered.T)[off].mean())
    t_raw = m.embed_text(captions, center=False)
    assert clap.modality_gap(centered, m.embed_text(captions))["centroid_gap"] < \
        clap.modality_gap(raw, t_raw)["centroid_gap"]


def test_running_means_start_at_the_first_batch_then_average():
    m = tiny_model()
    a, t = F.normalize(torch.randn(2, 8, 512), dim=-1)
    m.update_means(a, t)
    torch.testing.assert_close(m.audio_mean, a.mean(0))
    m.update_means(t, a)
    mom = m.cfg.center_momentum
    torch.testing.assert_close(m.audio_mean, mom * a.mean(0) + (1 - mom) * t.mean(0))


def test_noise_augment_keeps_unit_length_and_moves_by_about_std():
    e = F.normalize(torch.randn(256, 512), dim=1)
    n = clap.noise_augment(e, 0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(n.norm(dim=1), torch.ones(256))
    assert (n - e).norm(dim=1).mean().item() == pytest.approx(0.3, rel=0.1)
    assert clap.noise_augment(e, 0.0) is e


# --- checkpoints -----------------------------------------------------------------------------------

def test_checkpoint_rebuilds_the_same_model(tmp_path):
    tr = clap.Trainer(clap.PRESETS["tiny"], vocab=VOCAB)
    tr.step({"wav": 0.1 * torch.randn(4, 4096), "caption": ["a dog barking", "rain on a roof"] * 2}, 0)
    path = str(tmp_path / "clap.pt")
    save_checkpoint(tr.checkpoint(), path)
    loaded = clap_format.load_clap("tiny", path)
    wav = 0.1 * torch.randn(2, 4096)
    torch.testing.assert_close(loaded.embed_audio(wav), tr.model.eval().embed_audio(wav))
    torch.testing.assert_close(loaded.embed_text(["a low rumble"]), tr.model.embed_text(["a low rumble"]))
    assert loaded.vocab == VOCAB and loaded.mean_updates.item() == 1
    other = clap.TinyCLAP(clap.Config(**{**clap.PRESETS["tiny"].__dict__, "text_width": 64}), VOCAB)
    with pytest.raises(UserError, match="text_width"):
        runtime.load_into(other, tr.checkpoint(), "clap")


def test_trainer_state_resumes_exactly():
    batch = {"wav": 0.1 * torch.randn(4, 4096), "caption": ["a dog barking", "rain on a roof"] * 2}
    torch.manual_seed(0)
    a = clap.Trainer(clap.PRESETS["tiny"], vocab=VOCAB)
    a.step(batch, 0)
    torch.manual_seed(1)
    b = clap.Trainer(clap.PRESETS["tiny"], vocab=VOCAB)
    b.load_state_dict(a.state_dict())
    assert a.step(batch, 1)["loss"] == b.step(batch, 1)["loss"]


def test_trainer_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        clap.Trainer(clap.PRESETS["tiny"])


# --- LAION-CLAP: the wrapper's own logic, with a STAND-IN for the laion-clap module ----------------

class StandInLaionModule:
    """NOT LAION-CLAP: a stand-in with laion-clap's two calls, recording what the wrapper sends it.

    Its "audio embedding" of a clip is (peak frequency in Hz, number of samples, 3, 4, 0, ...), far from
    unit length, so the test can see the resampling and the normalisation. Like laion-clap before its
    fix for issue #85, it refuses a text batch of one.
    """

    def __init__(self):
        self.audio_calls, self.text_calls = [], []

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        assert use_tensor and torch.is_tensor(x) and x.dim() == 2
        self.audio_calls.append(x.clone())
        e = torch.zeros(x.shape[0], 512)
        for i, w in enumerate(x):
            e[i, 0], e[i, 1], e[i, 2], e[i, 3] = peak_hz(w, 48000), w.shape[0], 3.0, 4.0
        return e

    def get_text_embedding(self, texts, use_tensor=False):
        assert use_tensor and isinstance(texts, list)
        if len(texts) == 1:
            raise ValueError("not enough values to unpack (expected 2, got 1)")
        self.text_calls.append(list(texts))
        return np.stack([np.full(512, float(len(t))) for t in texts])   # numpy, as older laion-clap returns


def test_laion_wrapper_resamples_to_48k_batches_and_normalises():
    stand_in = StandInLaionModule()
    model = clap.LaionCLAP(stand_in, clap_format.to_laion_rate, batch_size=2)
    freqs = [440.0, 1000.0, 3000.0, 5000.0, 7000.0]
    wav = torch.stack([tone(f, mel.SR) for f in freqs])            # (5, 11025) at 22050 Hz
    e = model.embed_audio(wav)
    assert [c.shape[0] for c in stand_in.audio_calls] == [2, 2, 1]  # batches of 2, in order
    n48 = stand_in.audio_calls[0].shape[1]
    assert n48 == math.ceil(wav.shape[1] * 48000 / 22050)          # 0.5 s is 24000 samples at 48 kHz
    sent = torch.cat(stand_in.audio_calls)
    for f, w in zip(freqs, sent):
        assert abs(peak_hz(w, 48000) - f) < 48000 / n48 * 1.5      # each tone stays at its frequency
    assert e.shape == (5, 512)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    raw = torch.tensor([[peak_hz(w, 48000), n48, 3.0, 4.0] for w in sent], dtype=torch.float32)
    torch.testing.assert_close(e[:, :4], raw / raw.norm(dim=1, keepdim=True))


def test_laion_wrapper_text_single_prompt_batches_and_normalises():
    stand_in = StandInLaionModule()
    model = clap.LaionCLAP(stand_in, clap_format.to_laion_rate, batch_size=2)
    one = model.embed_text(["a dog barking"])                      # a batch of one goes in twice
    assert one.shape == (1, 512) and stand_in.text_calls[0] == ["a dog barking"] * 2
    e, unknown = model.embed_text(["ab", "abc", "abcd"], return_unknown=True)
    assert [len(c) for c in stand_in.text_calls[1:]] == [2, 2]     # [ab, abc] and [abcd, abcd]
    torch.testing.assert_close(e, torch.full((3, 512), 1 / math.sqrt(512)))
    assert unknown == [[], [], []]
    with pytest.raises(ValueError, match="empty"):               # sample.py has said so in one sentence before
        model.embed_text([" "])


def test_missing_laion_clap_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)          # makes `import laion_clap` fail
    with pytest.raises(UserError, match="pip install laion-clap"):
        clap_format.load_clap("laion", "630k-audioset-best.pt")


def test_laion_clap_without_torchvision_names_torchvision(monkeypatch, tmp_path):
    # a fake laion_clap package that, like the real one, imports torchvision; torchvision made missing
    (tmp_path / "laion_clap").mkdir()
    (tmp_path / "laion_clap" / "__init__.py").write_text("import torchvision\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "laion_clap", raising=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(UserError, match="torchvision"):
        clap_format.load_laion("630k-audioset-best.pt")


def test_missing_laion_checkpoint_says_how_to_get_it(monkeypatch, tmp_path):
    (tmp_path / "laion_clap").mkdir()
    (tmp_path / "laion_clap" / "__init__.py").write_text("")      # an importable stand-in package
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "laion_clap", raising=False)
    with pytest.raises(UserError, match="--clap-ckpt"):
        clap_format.load_laion(str(tmp_path / "absent.pt"))
    with pytest.raises(UserError, match="--clap-ckpt"):
        clap_format.load_laion(None)
    with pytest.raises(UserError, match="is a folder"):                  # not "does not exist"
        clap_format.load_laion(str(tmp_path))
    with pytest.raises(UserError, match="tiny or laion"):
        clap_format.load_clap("big", "x.pt")


# --- learning: a TinyCLAP trained for a few seconds on toy clips retrieves far above chance ---------

TOY_LEN = 16384   # 0.74 s clips: short enough to train in seconds, long enough for a sound's texture


def toy_pairs(split, n):
    """(wavs (n, T), captions, kinds) from the toy sound world (data/toyworld.py)."""
    from data import toyworld
    ds = toyworld.ToyDataset(split, n, TOY_LEN)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it["wav"] for it in items]), [it["caption"] for it in items],
            torch.tensor([int(it["kind"]) for it in items]))


def test_tiny_clap_learns_the_toy_world():
    """150 steps (about 10 s) on 256 short toy clips; then held-out clips of the 12 kinds are classified
    zero-shot from the kind names alone, and each kind name retrieves a clip of its kind."""
    from data import toyworld
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # on a shared 2-core machine two threads that wait on each other run ~10x slower
    try:
        torch.manual_seed(0)
        wav, captions, kinds = toy_pairs("train", 256)
        tr = clap.Trainer(clap.PRESETS["tiny"], vocab=clap.build_vocab(captions), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for step in range(150):
            idx = torch.randint(0, len(captions), (32,), generator=g)
            tr.step({"wav": wav[idx], "caption": [captions[i] for i in idx], "kind": kinds[idx]}, step)
        model = tr.model.eval()
        test_wav, _, test_kinds = toy_pairs("test", 96)
        sim = model.embed_audio(test_wav) @ model.embed_text(list(toyworld.KINDS)).T   # (96 clips, 12 kinds)
    finally:
        torch.set_num_threads(threads)
    accuracy = (sim.argmax(1) == test_kinds).float().mean().item()            # clip -> nearest kind name
    recall = (test_kinds[sim.argmax(0)] == torch.arange(len(toyworld.KINDS))).float().mean().item()  # name -> top clip
    chance = 1 / len(toyworld.KINDS)
    assert accuracy > 6 * chance, f"zero-shot accuracy {accuracy:.2f} (chance {chance:.2f})"
    assert recall >= 0.75, f"text-to-audio recall@1 {recall:.2f} (chance about {chance:.2f})"
