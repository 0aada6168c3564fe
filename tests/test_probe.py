"""evaluate.py --probe, --reconstruction and --curve: the linear probe cannot see its test labels, a folder
of audio with a tag table runs the same probe, reconstruction FAD is measured against the right clips, and
the FAD curve's early stop is the lowest point."""

import json
import os
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate
import mel
from evaluation import curve, judges, metrics, probe, reconstruction


def tagged_features(n, informative, seed):
    """n rows of 16-d features and 0/1 labels of 3 tags; informative: the labels shifted into the features."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 3, generator=g) < 0.4).float()
    x = torch.randn(n, 16, generator=g)
    if informative:
        x[:, :3] += 3.0 * y
    return x, y


def test_the_probe_learns_tags_that_the_features_carry():
    (xa, ya), (xb, yb) = tagged_features(200, True, 0), tagged_features(100, True, 1)
    got = probe.probe_scores(xa, ya, xb, yb, seeds=[0])
    assert got["roc_auc"][0] > 0.9 and got["map"][0] > 0.8


def test_shuffled_training_labels_give_chance_roc_auc_on_the_test_clips():
    # One shuffle leaves a chance correlation between its labels and the informative features, which the
    # test clips then rank by: the mean over several shuffles is what sits at one half.
    (xa, ya), (xb, yb) = tagged_features(600, True, 0), tagged_features(200, True, 1)
    aucs = []
    for s in range(4):
        shuffled = ya[torch.randperm(len(ya), generator=torch.Generator().manual_seed(s))]
        aucs += probe.probe_scores(xa, shuffled, xb, yb, seeds=[0])["roc_auc"]
    assert abs(sum(aucs) / len(aucs) - 0.5) < 0.06
    assert probe.probe_scores(xa, ya, xb, yb, seeds=[0])["roc_auc"][0] > 0.9   # the same data, labels kept


def test_the_probe_is_scored_on_clips_it_never_saw():
    # Noise features: the probe can memorise its 40 training clips (training-set AUC near 1), so a probe
    # scored on the clips it learnt from would look good; on the held-out clips it must be at chance.
    # Seeded: the noise, not the test order, fixes how far from one half the held-out AUC lands.
    (xa, ya), (xb, yb) = tagged_features(40, False, 0), tagged_features(200, False, 1)
    g = torch.Generator().manual_seed(2)
    xa, xb = torch.randn(40, 64, generator=g), torch.randn(200, 64, generator=g)
    assert probe.probe_scores(xa, ya, xa, ya, seeds=[0])["roc_auc"][0] > 0.9
    assert abs(probe.probe_scores(xa, ya, xb, yb, seeds=[0])["roc_auc"][0] - 0.5) < 0.1


def test_the_toy_tagging_set_carries_both_kinds_of_a_mixture():
    wavs, labels = probe.toy_tagging_set("test", 24, 4096)
    assert wavs.shape == (24, 4096) and set(labels.sum(1).tolist()) <= {1.0, 2.0}
    assert (labels.sum(1) == 2).any()                                    # some clips mix two kinds
    assert all(labels[i, i % 12] == 1 for i in range(24))                # the first kind cycles with the index


def write_tagged_folder(folder, split_column=True, bad=None):
    """Eight short wavs: a 440 Hz tone, noise, or both; and their tag table."""
    rng = np.random.default_rng(0)
    t = np.arange(6000) / 22050
    rows = []
    for i in range(8):
        tone, noise = i % 2 == 0, i % 3 != 0
        x = 0.3 * np.sin(2 * np.pi * 440 * t) * tone + 0.1 * rng.standard_normal(len(t)) * noise
        sf.write(os.path.join(folder, f"clip{i}.wav"), x.astype(np.float32), 22050)
        split = "test" if i in (5, 6) else "train"
        rows.append([f"clip{i}.wav", str(int(tone)), str(int(noise))] + ([split] if split_column else []))
    if bad:
        rows[1][1] = bad
    header = ["file", "tone", "noise"] + (["split"] if split_column else [])
    path = os.path.join(folder, "labels.csv")
    with open(path, "w") as f:
        f.write("\n".join(",".join(r) for r in [header] + rows) + "\n")
    return path


def test_a_folder_of_audio_with_a_tag_table_runs_the_probe(tmp_path, capsys):
    labels = write_tagged_folder(str(tmp_path))
    assert evaluate.main(["--probe-data", str(tmp_path), "--probe-labels", labels, "--probe-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 training and 2 test clips" in out and "(all 2 tags" in out and "each clip scored whole" in out
    rows = [line for line in out.splitlines() if line.startswith("| SpecMaskGIT, trained")]
    assert len(rows) == 1


def test_a_magnatagatune_like_table_is_read_with_its_columns():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "annotations_final.csv")
        with open(path, "w") as f:
            f.write("clip_id\tguitar\tpiano\tmp3_path\n")
            for i in range(8):
                f.write(f"{i}\t{i % 2}\t{int(i < 3)}\t{'0d'[i % 4 == 3]}/clip{i}.wav\n")
        t = probe.read_tag_table(d, path)
    assert t.tags == ["guitar", "piano"] and t.labels.shape == (8, 2)
    assert t.paths[3] == os.path.join(d, "d/clip3.wav") and t.labels[3].tolist() == [1.0, 0.0]
    assert t.is_test.tolist() == [False, False, False, True] * 2         # MagnaTagATune's split: folder d is test


def test_a_tag_that_is_not_0_or_1_is_one_sentence(tmp_path, capsys):
    labels = write_tagged_folder(str(tmp_path), bad="yes")
    assert evaluate.main(["--probe-data", str(tmp_path), "--probe-labels", labels]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'yes'" in err and "\n" not in err


def test_the_latent_rate_of_both_presets_is_the_papers_27_hz():
    assert reconstruction.latent_rate(5, 53, 217088) == pytest.approx(26.9, abs=0.05)   # 265 tokens / 9.845 s
    assert reconstruction.latent_rate(5, 16, 65536) == pytest.approx(26.9, abs=0.05)    # the toy: 80 / 2.97 s


def test_reconstruction_fad_is_measured_against_the_clips_that_went_in(monkeypatch):
    # Stages that change nothing must score FAD 0 and FID 0: that holds only if the reference is the very
    # clips that went through them. Generated clips that are the other real set score the floor.
    monkeypatch.setattr(reconstruction, "vocoder_round_trip", lambda pipe, w: w.clone())
    monkeypatch.setattr(reconstruction, "codec_round_trip", lambda pipe, w: w.clone())
    other = {}

    def fake_generate(pipe, captions, seed=0):
        return other["wavs"]
    monkeypatch.setattr(reconstruction, "generate_clips", fake_generate)
    transformer = types.SimpleNamespace(cfg=types.SimpleNamespace(rows=5, cols=4))     # 16384 samples of 16 x 16 tokens
    pipe = types.SimpleNamespace(num_samples=16384, vocoder=None, transformer=transformer)
    real_val = reconstruction.toyworld.ToyDataset("val", n=8, num_samples=16384)
    other["wavs"] = torch.stack([real_val[i]["wav"] for i in range(8)])

    def embed(w):
        m = mel.mel_spectrogram(w)
        return torch.cat([m.mean(-1), m.std(-1)], 1)
    r = reconstruction.run_reconstruction(pipe, embed, n=8, seed=0)
    sets = list(r["sets"].values())
    floor, vocoder, codec, generated = sets
    assert vocoder[0] == pytest.approx(0, abs=1e-6) and codec[0] == pytest.approx(0, abs=1e-6)
    assert vocoder[2] == pytest.approx(0, abs=1e-6)
    assert floor[0] > 1e-3 and generated[0] == pytest.approx(floor[0])


def write_log(folder, rows):
    with open(os.path.join(folder, "transformer.log.jsonl"), "w") as f:
        for row in rows:
            f.write((json.dumps(row) if isinstance(row, dict) else row) + "\n")


def test_the_curve_reads_the_eval_rows_and_stops_at_the_earliest_lowest_fad(tmp_path, capsys):
    write_log(tmp_path, [{"step": 0, "eval_fad": 0.5, "eval_clap_score": 0.1},
                         {"step": 10, "loss": 3.0, "lr": 1e-3},
                         {"step": 10, "eval_fad": 0.3, "eval_clap_score": 0.2},
                         {"step": 20, "eval_fad": 0.3, "eval_clap_score": 0.3},
                         {"step": 30, "eval_fad": 0.9, "eval_clap_score": 0.3},
                         {"step": 30, "eval_fad": 0.4, "eval_clap_score": 0.3},   # a resumed run's row replaces it
                         '{"step": 40, "eval_f'])                                 # cut by a kill
    rows = curve.read_curve(str(tmp_path))
    assert [s for s, _, _ in rows] == [0, 10, 20, 30] and rows[-1][1] == 0.4
    assert curve.early_stop(rows) == (10, 0.3)
    assert evaluate.main(["--curve", str(tmp_path)]) == 0
    assert "Early stop: step 10" in capsys.readouterr().out
    with open(tmp_path / "fad_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_curve_without_eval_rows_is_one_sentence(tmp_path, capsys):
    write_log(tmp_path, [{"step": 10, "loss": 3.0}])
    assert evaluate.main(["--curve", str(tmp_path)]) == 2
    assert "--eval-every" in capsys.readouterr().err


def test_the_kind_classifier_of_is_and_fid_recognises_real_clips():
    classify = reconstruction.train_kind_classifier(per_kind=10, num_samples=16384)
    wavs, kinds = judges.single_kind_clips("test", 3, num_samples=16384)
    probs, features = classify(wavs)
    assert (probs.argmax(1) == kinds).float().mean() > 0.6
    assert metrics.inception_score(probs) > 4                                  # 12 kinds, mostly told apart
