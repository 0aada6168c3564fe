"""evaluate.py: the Fréchet audio distance against independent computations, the CLAP score, and the
judges' bookkeeping (which clip was asked to be which kind, and how the right answers are counted)."""

import math
import re

import numpy as np
import pytest
import torch

import evaluate
import mel
from evaluation import ablations, clips, judges, metrics
import pipeline
from data import toyworld
from ground.runtime import UserError


def gaussian_set(n, mean, var, seed):
    """n rows whose *sample* mean is exactly `mean` and whose sample covariance is exactly diag(var)."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    x = x @ torch.linalg.inv(chol).T                                   # sample covariance = identity
    return x * torch.as_tensor(var, dtype=torch.float64).sqrt() + torch.as_tensor(mean, dtype=torch.float64)


def test_fad_of_a_set_with_itself_is_zero_also_with_fewer_clips_than_dimensions():
    g = torch.Generator().manual_seed(0)
    many = torch.randn(300, 16, generator=g)
    few = torch.randn(20, 64, generator=g)                              # singular covariance (rank 19)
    assert metrics.frechet_distance(many, many) < 1e-9
    assert metrics.frechet_distance(few, few) < 1e-6
    assert metrics.frechet_distance(few, few) < 1e-4 * metrics.frechet_distance(few, few + 0.1)


def test_fad_of_two_gaussians_matches_the_closed_form_for_diagonal_covariances():
    # For diagonal S_a, S_b the formula reduces to ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu_a, var_a = [0.0, 1.0, -2.0, 0.5], [1.0, 4.0, 0.25, 2.0]
    mu_b, var_b = [1.0, 1.0, 0.0, 0.0], [9.0, 1.0, 0.25, 0.5]
    a, b = gaussian_set(500, mu_a, var_a, 1), gaussian_set(700, mu_b, var_b, 2)
    expected = sum((x - y) ** 2 for x, y in zip(mu_a, mu_b)) + sum((x ** 0.5 - y ** 0.5) ** 2 for x, y in zip(var_a, var_b))
    assert abs(metrics.frechet_distance(a, b) - expected) < 1e-9 * expected


def test_fad_matches_numpy_eigenvalues_of_the_product_for_full_covariances():
    # Independent route: Tr((S_a S_b)^1/2) = sum of sqrt of the eigenvalues of the non-symmetric S_a S_b.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6)) + 1.0
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s_a @ s_b).real.clip(0)).sum()
    expected = np.square(a.mean(0) - b.mean(0)).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt
    assert abs(metrics.frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) - expected) < 1e-8 * expected


def test_fad_is_symmetric_and_a_shift_of_the_mean_adds_its_squared_length():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(40, 32, generator=g, dtype=torch.float64)
    b = torch.randn(30, 32, generator=g, dtype=torch.float64) * 1.5
    ab, ba = metrics.frechet_distance(a, b), metrics.frechet_distance(b, a)
    assert ab == ba                                               # symmetric by construction, on every CPU
    shift = torch.randn(32, generator=g, dtype=torch.float64)
    assert abs(metrics.frechet_distance(a, a + shift) - shift.square().sum().item()) < 1e-7


def test_matrix_square_root_squared_gives_back_the_matrix():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 7, generator=g, dtype=torch.float64)
    for m in (x.T @ x, x[:4].T @ x[:4]):                               # full rank, and rank 4 of 7
        root = metrics.sqrtm_psd(m)
        assert torch.allclose(root @ root, m, atol=1e-10)
        assert torch.allclose(root, root.T) and torch.linalg.eigvalsh(root).min() > -1e-7


def test_clap_score_is_the_mean_cosine_of_the_pairs():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    a = torch.tensor([[5.0, 0.0], [0.0, -1.0], [1.0, 1.0]])            # cosines 1, -1, 1/sqrt(2)
    assert abs(metrics.clap_score(t, a) - (1 - 1 + 2 ** -0.5) / 3) < 1e-9


def test_zero_shot_picks_the_nearest_kind_and_the_counts_are_per_kind():
    kinds = torch.eye(3, 5)                                             # three kinds, 5-dim embeddings
    audio = torch.tensor([[0.9, 0.1, 0, 0, 0], [0.2, 0.1, 0.8, 0, 0], [0, 3.0, 0, 1, 1], [0.5, 0.6, 0, 0, 0]])
    predicted = judges.zero_shot_kinds(audio, kinds)
    assert predicted.tolist() == [0, 2, 1, 1]
    right, total, overall = judges.accuracy_by_kind(predicted, torch.tensor([0, 0, 1, 1]), 3)
    assert right == [1, 2, 0] and total == [2, 2, 0] and overall == 0.75    # kind 2 had no clip


class StubCLAP:
    """Embeds a stub clip (every sample = its kind id) and a kind's name as that kind's one-hot vector."""

    def embed_audio(self, wav):
        return torch.nn.functional.one_hot(wav[:, 0].round().long(), len(toyworld.KINDS)).float()

    def embed_text(self, texts):
        return torch.nn.functional.one_hot(torch.tensor([toyworld.KINDS.index(t) for t in texts]), len(toyworld.KINDS)).float()


class StubJudge:
    def predict(self, features):
        return features[:, 0].round().long()


def stub_pipeline(monkeypatch, calls: dict):
    """run_judges with every stage stubbed: a clip is its kind id repeated, the codec, vocoder and one-step
    fill are perfect, the judges read the id back, and the generator gets every kind right except "a
    siren", which always comes out as footsteps. `calls` receives what the generator and the fill were given."""
    siren, footsteps = toyworld.KINDS.index("a siren"), toyworld.KINDS.index("footsteps")
    calls.update(asked=[])

    def generate(pipe, prompts, steps, scale, temperature, seed, cfg_ramp=True, cond=None):
        calls["asked"].extend(prompts)
        calls.update(generated=scale, steps=steps, temperature=temperature, cond=cond)
        wanted = [toyworld.KINDS.index(p) for p in prompts] if cond is None else cond.argmax(-1).tolist()
        ids = [footsteps if k == siren else k for k in wanted]
        return torch.tensor(ids, dtype=torch.float32)[:, None].repeat(1, 64)

    def real_clips(split, per_kind, num_samples, seed):
        kinds = torch.arange(len(toyworld.KINDS)).repeat(per_kind)          # another order than the generated set
        return kinds.float()[:, None].repeat(1, num_samples), kinds

    monkeypatch.setattr(judges, "generate_clips", generate)
    monkeypatch.setattr(judges, "codec_round_trip", lambda pipe, wavs: wavs)
    monkeypatch.setattr(judges, "vocoder_round_trip", lambda pipe, wavs: wavs)
    monkeypatch.setattr(judges, "one_step_fill", lambda pipe, wavs, prompts, **kw: calls.update(fill=kw["guidance"])
                        or wavs)
    monkeypatch.setattr(judges, "single_kind_clips", real_clips)
    monkeypatch.setattr(judges, "train_judge", lambda **kwargs: StubJudge())
    monkeypatch.setattr(judges, "mel_features", lambda wav: wav[:, :1])
    monkeypatch.setattr(judges, "train_pitch_mfcc_judge", lambda **kwargs: StubJudge())
    monkeypatch.setattr(judges, "waveform_features", lambda wav: wav[:, :1])
    monkeypatch.setattr(judges, "rhythm_by_kind", lambda wavs, truth: {   # each rhythmic kind's clips' mean id
        name: float(wavs[truth == toyworld.KINDS.index(name)].mean()) for name in judges.RHYTHMIC_KINDS})
    return type("Pipe", (), {"clap": StubCLAP(), "device": "cpu", "num_samples": 64})()


def assert_only_sirens_missed(r: dict, per_kind: int) -> None:
    siren = toyworld.KINDS.index("a siren")
    expected_right = [0 if k == siren else per_kind for k in range(len(toyworld.KINDS))]
    assert list(r["generated"])[:3] == ["CLAP zero-shot", "mel-statistics judge", "pitch-and-MFCC judge"]
    for judge in ("CLAP zero-shot", "mel-statistics judge", "pitch-and-MFCC judge"):
        right, total, overall = r["generated"][judge]
        assert right == expected_right and total == [per_kind] * len(toyworld.KINDS)
        assert abs(overall - 11 / 12) < 1e-9
        for name in ("real", "vocoder", "codec", "one-step fill"):
            assert r[name][judge] == ([per_kind] * len(toyworld.KINDS), [per_kind] * len(toyworld.KINDS), 1.0)
    assert abs(r["generated"]["clap_score"] - 11 / 12) < 1e-6         # one-hot cosines: 1 when right, 0 when wrong
    assert abs(r["real"]["clap_score"] - 1) < 1e-6
    for name in ("real", "codec", "generated"):                        # the rhythm of each kind's own clips
        assert r[name]["onset_spread"] == {k: toyworld.KINDS.index(k) for k in judges.RHYTHMIC_KINDS}


def test_run_judges_scores_each_clip_against_the_kind_it_was_asked_for(monkeypatch, capsys):
    calls = {}
    pipe = stub_pipeline(monkeypatch, calls)
    r = judges.run_judges(pipe, per_kind=3, seed=0, guidance=8.0)               # evaluate.py --judges --cfg 8

    assert sorted(calls["asked"]) == sorted(toyworld.KINDS * 3) and calls["cond"] is None
    assert (calls["generated"], calls["fill"], calls["steps"], calls["temperature"]) == (8.0, 8.0, 16, 1.5)
    assert_only_sirens_missed(r, 3)
    judges.print_judges(r, 3)
    table = capsys.readouterr().out
    rows = re.findall(r"^\| a siren \| 3/3 \| 3/3 \| 3/3 \| 3/3 \| 0/3 \| footsteps \|$", table, re.M)   # heard as footsteps
    assert len(rows) == 3 and "\npitch-and-MFCC judge:\n" in table                  # one table per judge
    assert "from the kind's name (16 steps, CFG ramped to 8, T 1.5)" in table
    assert "given the kind's name (guidance 8)" in table
    assert evaluate.parse_args(["--judges", "--cfg", "8"]).cfg == 8.0 and evaluate.parse_args([]).cfg == 3.0
    with pytest.raises(UserError, match="--cfg must be between 0"):
        evaluate.parse_args(["--judges", "--cfg", "101"])


def test_judges_conditioned_on_real_clips_audio_embeddings_score_against_those_clips_kinds(monkeypatch, capsys):
    """--condition audio: one generated clip per real clip, conditioned on that clip's CLAP audio embedding,
    and judged against that clip's kind (the real set's order differs from the kind-by-kind text order)."""
    calls = {}
    pipe = stub_pipeline(monkeypatch, calls)
    args = evaluate.parse_args(["--judges", "--condition", "audio", "--steps", "32", "--temperature", "4.5"])
    r = judges.run_judges(pipe, 2, 0, args.steps, args.cfg, args.temperature, not args.no_cfg_ramp, args.condition)

    real_kinds = torch.arange(len(toyworld.KINDS)).repeat(2)                  # stub_pipeline's real order
    assert torch.equal(calls["cond"], torch.nn.functional.one_hot(real_kinds, len(toyworld.KINDS)).float())
    assert calls["asked"] == [toyworld.KINDS[k] for k in real_kinds]
    assert (calls["steps"], calls["temperature"]) == (32, 4.5)
    assert_only_sirens_missed(r, 2)
    judges.print_judges(r, 2)
    table = capsys.readouterr().out
    assert "from the CLAP audio embedding of a real clip of the kind (32 steps, CFG ramped to 3, T 4.5)" in table


def test_generated_clips_are_sample_py_clips_and_a_condition_given_as_embeddings_is_the_same_condition():
    """generate_clips makes what pipeline.text_to_audio (sample.py) makes for the same prompt and seed, and
    passing the prompts' CLAP text embeddings as `cond` changes nothing; another embedding changes the clip."""
    pipe = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, verbose=False)
    prompts = ["rain on a roof", "a clock ticking"]
    made = clips.generate_clips(pipe, prompts, steps=4, seed=5)
    wav = pipeline.text_to_audio(pipe, prompts, steps=4, seed=5, verbose=False)[0]
    assert torch.equal(made, wav.float().cpu())
    text = pipe.clap.embed_text(prompts)
    assert torch.equal(clips.generate_clips(pipe, prompts, steps=4, seed=5, cond=text), made)
    assert not torch.equal(clips.generate_clips(pipe, prompts, steps=4, seed=5, cond=text.flip(0)), made)


def test_without_cfg_means_the_conditional_logits_so_the_prompt_matters():
    """Table 1's "w/o CFG" is Eq. 2 at t = 1 (l_c alone): what it makes depends on the prompt. Scale 0
    is l_u alone (unconditional): the same clip whatever the prompt, for the same seed."""
    pipe = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, verbose=False)

    def clip(prompt, setting):
        return clips.generate_clips(pipe, [prompt], 16, temperature=1.5, seed=0, **setting)

    assert not torch.equal(clip("rain on a roof", ablations.NO_CFG), clip("a dog barking", ablations.NO_CFG))
    unconditional = {"guidance": 0.0, "cfg_ramp": True}
    assert torch.equal(clip("rain on a roof", unconditional), clip("a dog barking", unconditional))


def test_bad_flags_get_one_sentence_and_exit_code_2(capsys, tmp_path):
    for argv in (["--n", "1"], ["--per-kind", "0"], ["--steps", "0"], ["--steps", "257"], ["--temperature", "-1"], ["--temperature", "nan"], ["--condition", "image"],
                 ["--ckpt", str(tmp_path / "none.pt")],
                 ["--seed", str(2 ** 70)], ["--seed", "-1"]):
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and err.endswith(".")


# ---------------------------------------------------------------------------------------------------
# The mel-statistics judge
# ---------------------------------------------------------------------------------------------------

def test_nearest_centroid_on_points_with_known_centres():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 100.0], [5.0, 0.0, 100.0], [0.0, 5.0, 300.0]])   # 3rd feature in other units
    labels = torch.arange(3).repeat_interleave(50)
    points = centres[labels] + torch.randn(150, 3, generator=g) * torch.tensor([1.0, 1.0, 20.0])
    judge = judges.NearestCentroid().fit(points, labels)
    assert torch.equal(judge.predict(centres), torch.arange(3))
    assert judge.predict(centres[2]).item() == 2                    # one vector in, one label out
    # the centroids are the class means after scaling every feature by its spread
    z = (points - points.mean(0)) / points.std(0)
    assert torch.allclose(judge.centroids[1], z[labels == 1].mean(0), atol=1e-5)


def test_judge_tells_the_toy_kinds_apart_on_held_out_clips(tmp_path):
    judge = judges.train_judge(per_kind=20)
    wavs, kinds = judges.single_kind_clips("test", 10)
    assert set(kinds.tolist()) == set(range(len(toyworld.KINDS)))
    features = judges.mel_features(wavs)
    assert features.shape == (len(kinds), features.shape[1]) and torch.isfinite(features).all()
    accuracy = (judge.predict(features) == kinds).float().mean().item()
    print(f"nearest-centroid accuracy on {len(kinds)} held-out single-kind toy clips: {accuracy:.3f}")
    assert accuracy > 0.85                                           # chance is 1/12 = 0.083
    # the judge travels in a checkpoint as plain tensors
    path = tmp_path / "judge.pt"
    torch.save(judge.state_dict(), path)
    again = judges.NearestCentroid.from_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(again.predict(features), judge.predict(features))
    assert torch.allclose(judges.mel_features(wavs[0]), features[0], atol=1e-4)


def test_judge_features_ignore_loudness():
    wav = toyworld.toy_clip(0, 1)[0]
    assert torch.allclose(judges.mel_features(wav), judges.mel_features(0.5 * wav), atol=0.05)


def test_one_step_fill_keeps_the_visible_tokens_and_fills_the_hidden_ones_with_the_guided_argmax(monkeypatch):
    pipe = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, verbose=False)
    wavs = torch.stack([toyworld.ToyDataset("test", n=2, num_samples=pipe.num_samples)[i]["wav"] for i in range(2)])
    decoded = []
    monkeypatch.setattr(pipeline, "tokens_to_audio", lambda pipe, tokens: decoded.append(tokens) or (None, wavs))
    real = pipeline.audio_to_tokens(pipe, wavs)                                    # (2, 5, 16)
    clips.one_step_fill(pipe, wavs, ["rain on a roof", "a dog barking"], share=0.0)
    assert torch.equal(decoded[-1], real)                                        # nothing hidden: the codec's tokens
    clips.one_step_fill(pipe, wavs, ["rain on a roof", "a dog barking"], share=1.0, guidance=2.0)
    cond = pipe.clap.embed_text(["rain on a roof", "a dog barking"])
    everything = torch.ones(2, real[0].numel(), dtype=torch.bool)
    with torch.no_grad():                                                        # Eq. 2 by hand, then the argmax
        l_c = pipe.transformer(real, cond, everything.view_as(real))
        l_u = pipe.transformer(real, None, everything.view_as(real))
    assert torch.equal(decoded[-1].flatten(1), (l_u + 2.0 * (l_c - l_u)).argmax(-1))


def test_usual_mistake_names_the_kind_most_often_heard_instead():
    dog, siren, bell = (toyworld.KINDS.index(k) for k in ("a dog barking", "a siren", "a church bell"))
    truth = torch.tensor([dog, dog, dog, dog, siren])
    heard = torch.tensor([dog, bell, siren, bell, siren])
    assert judges.usual_mistake(heard, truth, dog) == "a church bell"        # twice, against the siren's once
    assert judges.usual_mistake(heard, truth, siren) == "-"                   # never mistaken


def test_vocoder_round_trip_rebuilds_the_clips_own_clipped_mel_at_their_length():
    pipe = pipeline.load_pipeline(pipeline.DEFAULT_CKPT, verbose=False)            # no vocoder: Griffin-Lim
    wavs = torch.stack([toyworld.ToyDataset("test", n=2, num_samples=pipe.num_samples)[i]["wav"] for i in range(2)])
    out = clips.vocoder_round_trip(pipe, wavs)
    assert out.shape == wavs.shape
    clipped = mel.mel_spectrogram(wavs).clamp(min=mel.DB_MIN / mel.DB_PER_NEPER,
                                              max=mel.DB_MAX / mel.DB_PER_NEPER)   # [-80, 20] dB, in nepers
    to_clipped = (out - mel.griffin_lim(clipped)[:, :wavs.shape[-1]]).abs().max()      # float32 dB round trip
    to_unclipped = (out - mel.griffin_lim(mel.mel_spectrogram(wavs))[:, :wavs.shape[-1]]).abs().max()
    assert to_clipped < 1e-3 and to_clipped < to_unclipped / 4                  # the clipped mel, not the raw one


# ---------------------------------------------------------------------------------------------------
# The pitch-and-MFCC judge
# ---------------------------------------------------------------------------------------------------

SECONDS = torch.arange(mel.TOY_SAMPLES // 2, dtype=torch.float64) / mel.SR     # 1.5 s


def test_pitch_track_finds_a_tones_f0_and_hears_a_glide_and_no_pitch_in_noise():
    f0 = torch.tensor([110.0, 440.0, 1760.0], dtype=torch.float64)[:, None]   # low, middle and high
    track, peak = judges.pitch_track(torch.sin(2 * np.pi * f0 * SECONDS).float())   # (3, frames)
    assert (track / f0 - 1).abs().max() < 0.02 and peak.min() > judges.VOICED    # all within 2 %, all voiced
    # a chirp from 300 to 1500 Hz: f(t) = 300 + a t, so d log2 f / dt = a / (f ln 2)
    a = 1200 / SECONDS[-1].item()
    chirp = torch.sin(2 * np.pi * (300 * SECONDS + a / 2 * SECONDS ** 2)).float()
    steady = torch.sin(2 * np.pi * 900 * SECONDS).float()
    noise = torch.randn(len(SECONDS), generator=torch.Generator().manual_seed(0))
    glide, hold, hiss = (judges.waveform_features(w)[36:40] for w in (chirp, steady, noise))
    mid = 900.0                                                         # the chirp's median pitch
    per_hop = a / (mid * np.log(2)) * judges.PITCH_HOP / mel.SR      # octaves per pitch hop at the median
    assert glide[0] == 1 and hold[0] == 1                               # both voiced throughout
    assert abs(glide[3] - per_hop) < 0.2 * per_hop and hold[3] < 0.1 * per_hop
    assert abs(hold[1] - np.log2(900 / 1000)) < 0.01 and abs(glide[1] - np.log2(mid / 1000)) < 0.05
    assert hiss[0] < 0.05                                               # white noise: (almost) no frame voiced


def test_the_third_judge_tracks_a_pitch_only_in_frames_less_than_quiet_db_below_the_loudest():
    # A tone of period 64 samples (344.5 Hz: every frame holds whole periods, the level steps at a zero crossing,
    # so nothing above 8 kHz rings) at full level for the first 30 pitch hops, then 0.1 dB louder or quieter
    # than QUIET_DB below it (in power: 20 log10 of the amplitude). Frames 30 on lie wholly in the quiet part:
    # tracked (voiced) just above the threshold, left out just below; the 30 frames before hold loud samples.
    n = torch.arange(32768, dtype=torch.float64)
    frames = 1 + (len(n) - judges.PITCH_FRAME) // judges.PITCH_HOP              # 61
    step = 30 * judges.PITCH_HOP
    shares = []
    for db in (judges.QUIET_DB - 0.1, judges.QUIET_DB + 0.1):
        quiet = 10 ** (-db / 20)
        wav = torch.sin(2 * np.pi * n / 64) * torch.where(n < step, 1.0, quiet)
        shares.append(judges.waveform_features(wav.float())[36].item())       # the voiced share
    assert shares == pytest.approx([1.0, 30 / frames], abs=1e-6)


def test_dct_matrix_is_the_orthonormal_dct_ii_summed_by_hand():
    x = np.random.default_rng(0).standard_normal(judges.N_BANDS)
    n = np.arange(judges.N_BANDS)
    by_hand = [np.sqrt((1 if k == 0 else 2) / len(x)) * np.sum(x * np.cos(np.pi * k * (2 * n + 1) / (2 * len(x))))
               for k in range(judges.N_MFCC)]
    assert np.allclose(judges.dct_matrix().double().numpy() @ x, by_hand, atol=1e-5)
    full = judges.dct_matrix(judges.N_BANDS, judges.N_BANDS)
    assert torch.allclose(full @ full.T, torch.eye(judges.N_BANDS), atol=1e-5)   # orthonormal


def test_filterbank_ignores_everything_above_8_khz_and_covers_the_band_below():
    bank = judges.triangular_filterbank()                             # (40, 513)
    hz = torch.fft.rfftfreq(judges.FEATURE_FFT, 1 / mel.SR)
    assert bank[:, hz > judges.FEATURE_FMAX].abs().max() == 0
    first, last = hz[bank[0].argmax()], hz[bank[-1].argmax()]          # the outermost bands' peaks
    inside = (hz > first) & (hz < last)
    assert torch.allclose(bank[:, inside].sum(0), torch.ones(int(inside.sum())), atol=1e-5)   # triangles overlap to 1


def test_waveform_features_ignore_level_and_what_lies_above_8_khz():
    wav = judges.single_kind_clips("test", 1, num_samples=mel.TOY_SAMPLES // 2)[0][:3]   # rain, dog, birds
    feats = judges.waveform_features(wav)
    assert feats.shape == (3, 44) and torch.isfinite(feats).all()
    assert torch.allclose(judges.waveform_features(0.1 * wav), feats, atol=1e-3)
    hz = torch.fft.rfftfreq(wav.shape[-1], 1 / mel.SR)
    hiss = torch.fft.irfft(torch.randn(len(hz), generator=torch.Generator().manual_seed(1)) * (hz > 9000), n=wav.shape[-1])
    assert torch.allclose(judges.waveform_features(wav + 0.5 * hiss / hiss.std()), feats, atol=1e-3)
    assert torch.allclose(judges.waveform_features(wav[1]), feats[1], atol=1e-4)   # one clip in, one row out


def test_envelope_rhythm_finds_the_period_of_a_click_train_and_none_in_steady_noise():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, len(SECONDS), generator=g)
    beat = ((SECONDS % 0.5) < 0.03).float()                             # a 30 ms burst every 0.5 s
    rhythm = judges.envelope_rhythm(noise * torch.stack([beat, torch.ones_like(beat)]))
    assert rhythm[0, 0] > 0.5 and abs(10 ** rhythm[0, 1].item() - 0.5) < 0.02   # repeats strongly, every 0.5 s
    assert rhythm[1, 0] < 0.3 * rhythm[0, 0]                            # steady noise: no repetition stands out

def test_k_nearest_votes_by_majority_and_breaks_ties_by_the_nearest():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 11.0]])
    labels = torch.tensor([7, 7, 7, 3, 3, 3])                           # class ids need not be 0..K-1
    judge = judges.KNearest(k=3).fit(points, labels)
    assert judge.predict(torch.tensor([[0.5, 0.5], [10.5, 10.5], [4.0, 4.0]])).tolist() == [7, 3, 7]
    assert judge.predict(torch.tensor([10.0, 9.0])).item() == 3         # one vector in, one label out
    # k = 2 between one point of each class: a 1-1 tie, won by the nearer one
    two = judges.KNearest(k=2).fit(torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([1, 2, 2]))
    assert two.predict(torch.tensor([[0.4], [0.6]])).tolist() == [1, 2]
    # features are scaled by the training spread: the 2nd feature's large units do not decide alone
    wide = judges.KNearest(k=1).fit(torch.tensor([[0.0, 0.0], [1.0, 1000.0]]), torch.tensor([0, 1]))
    assert wide.predict(torch.tensor([0.9, 400.0])).item() == 1         # 0.9 of the way in x, 0.4 in y


def test_pitch_mfcc_judge_tells_the_toy_kinds_apart_and_travels_in_a_checkpoint(tmp_path):
    n = mel.TOY_SAMPLES // 2                                            # 1.5 s clips keep the test fast
    judge = judges.train_pitch_mfcc_judge(per_kind=12, num_samples=n, seed=1)
    wavs, kinds = judges.single_kind_clips("test", 6, num_samples=n, seed=0)
    features = judges.waveform_features(wavs)
    accuracy = (judge.predict(features) == kinds).float().mean().item()
    assert accuracy > 0.85                                              # chance is 1/12 = 0.083
    path = tmp_path / "judge.pt"
    torch.save(judge.state_dict(), path)
    again = judges.KNearest.from_state_dict(torch.load(path, weights_only=True))
    assert again.k == 5 and torch.equal(again.predict(features), judge.predict(features))


# ---------------------------------------------------------------------------------------------------
# Names: every command says what it computes
# ---------------------------------------------------------------------------------------------------

def test_no_file_calls_a_paper_by_a_seed_number():
    # The project's papers are cited by their authors and titles, never by the number of a file that
    # only one machine had ("seed" followed by a zero-padded number).
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    pattern = re.compile("seed" + r"[\s_-]*0\d\d", re.IGNORECASE)
    files = [p for p in root.rglob("*.py") if ".git" not in p.parts and "venv" not in str(p)]
    files += [root / name for name in ("README.md", "RESULTS.md") if (root / name).exists()]
    found = [f"{p.relative_to(root)}:{n}" for p in files
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_is_and_fid_are_named_for_what_they_compute_and_not_compared_with_the_reports(capsys):
    from evaluation import reconstruction
    r = {"n": 4, "rate": 26.9, "vocoder": "x", "is_real": 11.0, "sets": {"Real": (0.1, 10.0, 0.2)}}
    reconstruction.print_reconstruction(r, "TinyCLAP")
    out = capsys.readouterr().out
    assert "IS of a linear classifier on log-mel statistics" in out
    assert "Fréchet distance of log-mel statistics" in out
    assert "NOT comparable" in out and "1.068" in out and "1.003" in out and "Zou, Gong and Gao" in out
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert "Zou, Gong and Gao" in capsys.readouterr().out


def click_train(times_s, n=mel.TOY_SAMPLES, toe_s=None, seed=0):
    """Short 3 kHz clicks at `times_s` on a quiet noise floor; with toe_s, a softer second click that long after each."""
    g = torch.Generator().manual_seed(seed)
    wav = 1e-3 * torch.randn(n, generator=g)
    click = torch.sin(2 * math.pi * 3000 * torch.arange(256) / mel.SR) * torch.exp(-torch.arange(256) / 40.0)
    for t in times_s:
        for at, gain in [(t, 1.0)] + ([(t + toe_s, 0.5)] if toe_s else []):
            i = int(at * mel.SR)
            wav[i:i + 256] += gain * click[: n - i]
    return wav


def test_onset_times_find_each_click_within_two_frames_and_a_heel_and_its_toe_are_one_beat():
    times = [0.2, 0.7, 1.2, 1.7, 2.2, 2.7]
    for toe in (None, 0.07):
        found = judges.onset_times(click_train(times, toe_s=toe))
        assert len(found) == len(times)
        assert (found - torch.tensor(times)).abs().max() < 2.5 / judges.FRAME_RATE    # the 46 ms window smears a click


def test_onset_spread_is_the_intervals_std_over_their_mean_by_hand():
    assert judges.onset_spread(click_train([0.2, 0.7, 1.2, 1.7, 2.2, 2.7])) < 0.03    # a metronome
    times = np.cumsum([0.2, 0.3, 0.6, 0.25, 0.5, 0.4])                                # gaps 0.3 0.6 0.25 0.5 0.4
    gaps = np.diff(times)
    expected = gaps.std(ddof=1) / gaps.mean()                                        # torch's std: n - 1
    assert judges.onset_spread(click_train(times)) == pytest.approx(expected, abs=0.03)
    assert math.isnan(judges.onset_spread(click_train([0.5, 1.5])))                  # one interval: no spread


def test_real_clocks_and_footsteps_keep_time_and_the_median_leaves_out_clips_without_beats():
    wavs, kinds = judges.single_kind_clips("test", 4, seed=0)
    spread = judges.rhythm_by_kind(wavs, kinds)
    assert spread["a clock ticking"] < 0.03 and spread["footsteps"] < 0.08
    clock = toyworld.KINDS.index("a clock ticking")
    silent = wavs.clone()
    silent[(kinds == clock).nonzero()[0, 0]] = 0                                     # no beat at all: NaN, left out
    assert not math.isnan(judges.rhythm_by_kind(silent, kinds)["a clock ticking"])
