"""evaluate.py --probe, --reconstruction and --curve: the linear probe cannot see its test labels, a folder
of audio with a tag table runs the same probe, reconstruction FAD is measured against the right clips, and
the FAD curve's early stop is the lowest point."""

import contextlib
import io
import json
import math
import os
import re
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate
import mel
import pipeline
import specmaskgit
from conftest import CLIP, tiny_bundle
from data import toyworld
from evaluation import curve, judges, metrics, probe, reconstruction
from ground.runtime import load_checkpoint, save_checkpoint


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


def test_a_table_without_a_split_column_tests_on_every_fourth_file_in_its_order():
    """No split column and no MagnaTagATune folders: files 3, 7, ... of the table are the test clips, as printed."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        labels = write_tagged_folder(d, split_column=False)
        table = probe.read_tag_table(d, labels)
    names = [os.path.basename(p) for p in table.paths]
    assert [n for n, t in zip(names, table.is_test.tolist()) if t] == ["clip3.wav", "clip7.wav"]
    assert "every fourth file" in table.about


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


# ---------------------------------------------------------------------------------------------------
# The probe command's own path: evaluate.py --probe on a bundle whose transformer has four blocks (so the
# middle block 2 and the last block 4 differ) and dropout 0.5 (so a model left in training mode gives other
# features than the same model in eval mode). Spies record what run_probe hands on; nothing is replaced.
# ---------------------------------------------------------------------------------------------------

PROBE_N = 8                                     # --probe-n 8: 8 training clips and max(4, 8 // 2) = 4 test clips


def four_block_bundle(folder) -> str:
    """conftest's tiny bundle with its transformer replaced by a 4-block one (dropout 0.5, seed 1: other weights
    than the probe's untrained copy, seed 0)."""
    b = load_checkpoint(tiny_bundle(folder), "bundle")
    cfg = specmaskgit.Config(**{**b["transformer"]["config"], "n_layers": 4, "dropout": 0.5})
    torch.manual_seed(1)
    b["transformer"] = specmaskgit.Trainer(cfg).checkpoint()
    path = str(folder / "four_blocks.pt")
    save_checkpoint(b, path)
    return path


@pytest.fixture(scope="module")
def probe_command(tmp_path_factory):
    """evaluate.main(--probe) once: its exit code and stdout; for every probe_feature_sets call the pipe, the clips
    and the feature sets, with (module, .training) of every module that ran a forward inside it; and the
    arguments of every probe_scores call."""
    ckpt = four_block_bundle(tmp_path_factory.mktemp("probe_command"))
    calls = {"features": [], "modes": [], "scores": []}
    real_features, real_scores = probe.probe_feature_sets, probe.probe_scores

    def features_spy(pipe, wavs, *args, **kwargs):
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, inputs, output: calls["modes"].append((module, module.training)))
        try:
            feats = real_features(pipe, wavs, *args, **kwargs)
        finally:
            hook.remove()
        calls["features"].append((pipe, wavs.clone(), feats))
        return feats

    def scores_spy(train_x, train_y, test_x, test_y, seeds):
        calls["scores"].append((train_x, train_y, test_x, test_y, list(seeds)))
        return real_scores(train_x, train_y, test_x, test_y, seeds)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(probe, "probe_feature_sets", features_spy)
        mp.setattr(probe, "probe_scores", scores_spy)
        rc = evaluate.main(["--ckpt", ckpt, "--probe", "--probe-n", str(PROBE_N), "--probe-seeds", "1",
                            "--device", "cpu"])
    return rc, out.getvalue(), calls


def toy_split(split, n):
    """The first n clips of a toy split as toyworld makes them, and their multi-hot kinds (n, 12)."""
    d = toyworld.ToyDataset(split, n=n, num_samples=CLIP)
    labels = torch.zeros(n, len(toyworld.KINDS))
    for i in range(n):
        labels[i, toyworld.toy_clip(d.seed, i, CLIP)[2]] = 1
    return torch.stack([d[i]["wav"] for i in range(n)]), labels


def test_the_probe_command_trains_on_the_toy_train_split_and_scores_on_the_test_split(probe_command):
    # Which clips are learnt and which scored, as data: the first --probe-n clips of the train split, the first
    # half as many of the test split, no clip in both, and every row's probe fed the matching features and tags.
    rc, out, calls = probe_command
    assert rc == 0 and "8 training and 4 test clips" in out
    (_, train_wavs, train_feats), (_, test_wavs, test_feats) = calls["features"]
    (train_clips, train_tags), (test_clips, test_tags) = toy_split("train", PROBE_N), toy_split("test", 4)
    assert torch.equal(train_wavs, train_clips) and torch.equal(test_wavs, test_clips)
    assert not any(torch.equal(a, b) for a in train_wavs for b in test_wavs)
    assert len(calls["scores"]) == len(train_feats) == 7
    for (train_x, train_y, test_x, test_y, seeds), name in zip(calls["scores"], train_feats):
        assert torch.equal(train_x, train_feats[name]) and torch.equal(test_x, test_feats[name]), name
        assert torch.equal(train_y, train_tags) and torch.equal(test_y, test_tags) and seeds == [0]


def test_the_probe_command_takes_features_with_every_model_in_eval_mode(probe_command):
    # Dropout and batch norm off: every module that runs while features are taken (the transformer, its
    # untrained copy, the VQGAN, TinyCLAP) is in eval mode; the 4-block transformer's dropout 0.5 would show.
    calls = probe_command[2]
    pipe, modes = calls["features"][0][0], calls["modes"]
    ran, trained = {id(module) for module, _ in modes}, {id(b) for b in pipe.transformer.blocks}
    assert {id(pipe.vq.encoder), id(pipe.clap.audio)} | trained <= ran
    assert any(isinstance(m, specmaskgit.Block) and id(m) not in trained for m, _ in modes)   # the untrained copy's
    assert [type(module).__name__ for module, training in modes if training] == []


def clap_slot(model, tokens) -> int:
    """The position of the transformer's input sequence that the CLAP embedding enters: the only one that changes
    when the condition does (nothing masked)."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    cond = torch.randn(len(tokens), model.cfg.cond_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        changed = (model.embed(tokens, None, mask) - model.embed(tokens, cond, mask)).abs().amax((0, 2)) > 0
    assert changed.sum() == 1
    return int(changed.nonzero())


def pooled_by_hand(model, tokens, where, cond=None) -> torch.Tensor:
    """The mean over the grid positions of module `where`'s output in the model's own forward pass (eval mode,
    nothing masked): the CLAP slot left out of a block's output; the final LayerNorm sees the grid alone."""
    seen = {}
    hook = where.register_forward_hook(lambda module, inputs, output: seen.update(out=output))
    with torch.no_grad():
        model.eval()(tokens, cond, torch.zeros_like(tokens, dtype=torch.bool))
    hook.remove()
    out = seen["out"]
    if out.shape[1] == tokens.shape[1] * tokens.shape[2] + 1:
        keep = [p for p in range(out.shape[1]) if p != clap_slot(model, tokens)]
        out = out[:, keep]
    assert out.shape[1] == tokens.shape[1] * tokens.shape[2]
    return out.mean(1)


def test_the_probe_features_are_the_mean_over_the_grid_of_the_middle_and_the_last_block(probe_command):
    # Block 2 of 4 (the middle), and block 4 through the final LayerNorm, each pooled over the 5 x 8 token
    # positions without the CLAP slot, recomputed from the model's own forward pass; the untrained row is the
    # same config built from seed 0; the other rows are TinyCLAP's embedding, the VQGAN's quantised vectors
    # averaged over the grid, and each mel bin's mean and std over time.
    pipe, wavs, feats = probe_command[2]["features"][0]
    model = pipe.transformer
    assert len(model.blocks) == 4
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = specmaskgit.SpecMaskGIT(model.cfg)
    tokens = pipeline.audio_to_tokens(pipe, wavs)                               # (8, 5, 8)
    clap_emb = pipe.clap.embed_audio(wavs)
    log_mel = mel.mel_spectrogram(wavs)
    with torch.no_grad():
        quantised = pipe.vq.quantize(mel.normalize(log_mel))[0]                 # (8, D, 5, 8)
    rows = list(feats.values())
    expected = [pooled_by_hand(model, tokens, model.blocks[1]), pooled_by_hand(untrained, tokens, untrained.blocks[1]),
                pooled_by_hand(model, tokens, model.norm), pooled_by_hand(model, tokens, model.blocks[1], clap_emb),
                clap_emb, quantised.mean((2, 3)), torch.cat([log_mel.mean(2), log_mel.std(2)], 1)]
    assert [tuple(r.shape) for r in rows] == [(8, 32)] * 4 + [(8, 512), (8, 16), (8, 160)]
    for name, got, want in zip(feats, rows, expected):
        assert torch.allclose(got, want, atol=1e-5), name
    # the rows differ: a slip to another block, another pooling or another condition changes the numbers
    assert min((rows[a] - rows[b]).abs().max() for a in range(4) for b in range(a)) > 1e-3


def write_magnatagatune(folder, n_clips=32, n_tags=54, rare=(3, 17, 30, 44)):
    """annotations_final.csv in MagnaTagATune's layout (tab-separated, every field quoted; clip_id, the tag
    columns, mp3_path) and an empty file per clip. Clip i lies in folder "0123456789abcdef"[5 i % 16], so the
    test clips are scattered through the table. Tag j is on 2 + 5 j % 14 clips (2 to 15), except the `rare`
    tags (among the first 50 columns), on one clip each. Returns (path, labels (n_clips, n_tags), folders)."""
    labels = np.zeros((n_clips, n_tags), dtype=int)
    for j in range(n_tags):
        count = 1 if j in rare else 2 + 5 * j % 14
        labels[[(j + 3 * t) % n_clips for t in range(count)], j] = 1
    folders = ["0123456789abcdef"[5 * i % 16] for i in range(n_clips)]
    header = ["clip_id"] + [f"tag {j}" for j in range(n_tags)] + ["mp3_path"]
    lines = ["\t".join(f'"{v}"' for v in header)]
    for i in range(n_clips):
        mp3 = f"{folders[i]}/artist_{i}-album-{i:02d}-track_{i}-30-59.mp3"
        os.makedirs(os.path.join(folder, folders[i]), exist_ok=True)
        open(os.path.join(folder, mp3), "w").close()
        lines.append("\t".join(f'"{v}"' for v in [2 * i + 1, *labels[i], mp3]))
    path = os.path.join(folder, "annotations_final.csv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, labels, folders


def test_a_magnatagatune_table_is_probed_on_its_50_most_frequent_tags_and_its_folder_split(tmp_path, bundle,
                                                                                             monkeypatch, capsys):
    # 54 tags, four of them (not the last columns) on a single clip: the top 50 are the other 50, in column
    # order; taking every column, the least frequent or the first 50 gives another set. The split is the
    # folders': 0-b train, c validation (left out), d-f test. Each clip's features carry its index, so the
    # rows the probe learns from and is scored on say which clips they are.
    path, labels, folders = write_magnatagatune(str(tmp_path))
    kept = [j for j in range(labels.shape[1]) if labels[:, j].sum() > 1]
    assert len(kept) == 50 and labels[:, kept].sum(0).min() > 1 >= np.delete(labels, kept, 1).sum(0).max()

    def indexed_features(pipe, paths, untrained):
        index = torch.tensor([float(re.search(r"artist_(\d+)-", p).group(1)) for p in paths])
        return {"trained": torch.stack([index, index % 3], 1), "untrained": torch.stack([index % 5, index], 1)}
    recorded = []

    def scores_spy(train_x, train_y, test_x, test_y, seeds):
        recorded.append((train_x, train_y, test_x, test_y))
        return {"roc_auc": [0.5], "map": [0.5], "tags": 1}
    monkeypatch.setattr(probe, "folder_features", indexed_features)
    monkeypatch.setattr(probe, "probe_scores", scores_spy)
    assert evaluate.main(["--ckpt", bundle, "--probe-data", str(tmp_path), "--probe-labels", path,
                          "--probe-seeds", "1", "--device", "cpu"]) == 0
    train = [i for i, d in enumerate(folders) if d in "0123456789ab"]
    test = [i for i, d in enumerate(folders) if d in "def"]
    train_x, train_y, test_x, test_y = recorded[0]
    assert train_x[:, 0].long().tolist() == train and test_x[:, 0].long().tolist() == test
    assert torch.equal(train_y, torch.tensor(labels[train][:, kept], dtype=torch.float32))
    assert torch.equal(test_y, torch.tensor(labels[test][:, kept], dtype=torch.float32))
    out = capsys.readouterr().out
    assert "the 50 most frequent of 54 tags" in out and f"{len(train)} training and {len(test)} test clips" in out
    assert (f"0-b train, c validation (left out), d-f test: {len(train)} train, "
            f"{folders.count('c')} validation, {len(test)} test") in out


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


def inception_score_by_hand(p) -> float:
    """exp of the mean over clips of KL(p(y|x) || p(y)), summed term by term in float64."""
    p = p.double().numpy()
    marginal = p.mean(0)
    kl = [sum(p[i, k] * math.log(p[i, k] / marginal[k]) for k in range(p.shape[1]) if p[i, k] > 0)
          for i in range(p.shape[0])]
    return math.exp(sum(kl) / len(kl))


def test_each_reconstruction_row_scores_the_is_of_its_own_clips_predictions(monkeypatch):
    # Every set is made different (halved, faded in, seeded noise) and a stand-in classifier gives probabilities
    # that follow a clip's loudness in 12 stretches of time: each row's IS, and the real clips' IS, must be the
    # Inception Score of that very set's predictions, recomputed by hand; not its features' or another set's.
    def classify(wav):
        stretches = wav.reshape(len(wav), 12, -1).square().mean(-1).sqrt()      # (N, 12)
        return torch.softmax(4 * stretches, -1), stretches
    monkeypatch.setattr(reconstruction, "train_kind_classifier", lambda per_kind, num_samples: classify)
    monkeypatch.setattr(reconstruction, "vocoder_round_trip", lambda pipe, w: 0.5 * w)
    n, num_samples = 4, 12 * 1024
    fade_in = torch.linspace(0, 2, num_samples)
    monkeypatch.setattr(reconstruction, "codec_round_trip", lambda pipe, w: w * fade_in)
    noise = torch.randn(n, num_samples, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(reconstruction, "generate_clips", lambda pipe, captions, seed=0: noise * (1 + torch.arange(n))[:, None])
    pipe = types.SimpleNamespace(num_samples=num_samples, vocoder=None,
                                 transformer=types.SimpleNamespace(cfg=types.SimpleNamespace(rows=5, cols=3)))
    r = reconstruction.run_reconstruction(pipe, lambda w: mel.mel_spectrogram(w).mean(-1), n=n, seed=0)
    real = torch.stack([reconstruction.toyworld.ToyDataset("test", n=n, num_samples=num_samples)[i]["wav"]
                        for i in range(n)])
    other = torch.stack([reconstruction.toyworld.ToyDataset("val", n=n, num_samples=num_samples)[i]["wav"]
                         for i in range(n)])
    sets = [other, 0.5 * real, real * fade_in, noise * (1 + torch.arange(n))[:, None]]
    expected = [inception_score_by_hand(classify(w)[0]) for w in sets]
    assert [row[1] for row in r["sets"].values()] == pytest.approx(expected, rel=1e-6)
    assert r["is_real"] == pytest.approx(inception_score_by_hand(classify(real)[0]), rel=1e-6)
    assert len({round(v, 4) for v in expected + [r["is_real"]]}) == 5      # five different numbers


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
