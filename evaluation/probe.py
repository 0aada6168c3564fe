"""
evaluation/probe.py — the linear probe: multi-label tagging from frozen features of the transformer
(trained and untrained), TinyCLAP, the VQGAN and log-mel statistics.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 4, 5.2, Table 8   a single linear layer with batch normalisation and 0.1 dropout on frozen features,
                         ROC-AUC and mAP of music tagging on MagnaTagATune; here the toy's twelve kinds
                         are the tags, or a folder of audio with a table of tags (read_tag_table)

In:  a pipeline; toy clips, or --probe-data DIR with --probe-labels CSV
Out: mAP and ROC-AUC (mean and std over probe seeds) per feature set; a markdown table on stdout
Run: python evaluate.py --probe   # or --probe-data DIR --probe-labels annotations_final.csv
"""

import time

import torch
import torch.nn.functional as F

import mel
from ground import audio_io
from data import toyworld
from evaluation.clips import markdown_table
from ground.runtime import UserError


# ---------------------------------------------------------------------------------------------------
# Table 8: the linear probe (Sec. 4, 5.2). Multi-label tagging from frozen features.
# ---------------------------------------------------------------------------------------------------
#
# The paper probes SpecMaskGIT for music tagging on MagnaTagATune with "a single linear layer with batch
# normalization and 0.1 dropout" and reports ROC-AUC and mAP. In miniature the tags are the toy's twelve
# kinds: a clip that mixes two sounds carries both. It does not say which layer is probed, how the 265
# token outputs become one vector, or what the CLAP slot holds. Our choices:
#   - the middle block (3 of the tiny preset's 6): in generative transformers the last blocks turn towards
#     predicting the next code, and linear probes peak in the middle (iGPT, Chen et al. 2020; Jukebox
#     probing, Castellon et al. 2021, whose Jukebox row Table 8 quotes);
#   - the mean over the token positions (Audio-MAE's pooling for its linear probe), the CLAP token left out;
#   - the CLAP slot holds [M], the unconditional input the model learnt for CFG: a CLAP audio embedding
#     there would hand the probe TinyCLAP's tagging (a row of its own) instead of what the transformer learnt.
# Two extra rows show what the first and the last choice change; the untrained row (same config, seed 0)
# shows how much of the score the architecture and the VQGAN's tokens give before any training.

PROBE_SEEDS = 5            # probe initialisations and batch orders: the spread over them is the noise
PROBE_EPOCHS = 100
PROBE_BATCH = 32


def toy_tagging_set(split: str, n: int, num_samples: int, p_mix: float = toyworld.P_MIX):
    """The first n toy clips of a split with their multi-hot kinds: wavs (n, T), labels (n, 12) 0/1."""
    split_seed = toyworld.ToyDataset(split, n=0).seed
    wavs, labels = [], torch.zeros(n, len(toyworld.KINDS))
    for i in range(n):
        wav, _, kinds = toyworld.toy_clip(split_seed, i, num_samples, p_mix)
        wavs.append(wav)
        labels[i, kinds] = 1
    return torch.stack(wavs), labels


def read_tag_table(folder: str, labels_csv: str):
    """A folder of audio and a table of tags (comma- or tab-separated, with a header): one column names the
    file (path, file, filename or mp3_path: MagnaTagATune's annotations_final.csv; else the first column),
    an optional "split" column says train or test (else every fourth file is a test file), and every
    other column except clip_id is a 0/1 tag. Returns (paths, labels (N, K), is_test (N,), tag names)."""
    import csv
    import os
    if not os.path.isdir(folder):
        raise UserError(f"--probe-data {folder} is not a folder.")
    try:
        with open(labels_csv, newline="") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"--probe-labels {labels_csv} cannot be read ({e.strerror or e}).") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t" if "\t" in text.split("\n", 1)[0] else ","))
    if len(rows) < 3:
        raise UserError(f"{labels_csv} needs a header and at least two clips.")
    header, body = rows[0], [r for r in rows[1:] if r]
    names = [h.strip().lower() for h in header]
    file_col = next((names.index(c) for c in ("path", "file", "filename", "mp3_path") if c in names), 0)
    split_col = names.index("split") if "split" in names else None
    tag_cols = [i for i in range(len(header)) if i not in (file_col, split_col) and names[i] != "clip_id"]
    labels = torch.zeros(len(body), len(tag_cols))
    for r, row in enumerate(body):
        if len(row) != len(header):
            raise UserError(f"{labels_csv}, line {r + 2}: {len(row)} fields where the header has {len(header)}.")
        for k, c in enumerate(tag_cols):
            if row[c].strip() not in ("0", "1"):
                raise UserError(f"{labels_csv}, line {r + 2}: tag {header[c]!r} is {row[c]!r}, not 0 or 1.")
            labels[r, k] = float(row[c].strip())
    paths = [os.path.join(folder, row[file_col].strip()) for row in body]
    if split_col is None:
        is_test = torch.arange(len(body)) % 4 == 3
    else:
        is_test = torch.tensor([row[split_col].strip().lower() == "test" for row in body])
    if is_test.all() or not is_test.any():
        raise UserError(f"{labels_csv} must give both training and test clips.")
    return paths, labels, is_test, [header[c] for c in tag_cols]


@torch.inference_mode()
def transformer_features(model, tokens: torch.Tensor, block: int, cond: torch.Tensor | None = None,
                         batch: int = 64) -> torch.Tensor:
    """Mean over the token positions of block `block`'s output (1 = after the first block; n_layers = after
    the last, then through the final LayerNorm as the head sees it). Nothing is masked; cond None puts
    [M] in the CLAP slot. tokens (N, R, C) -> (N, W)."""
    out = []
    for i in range(0, len(tokens), batch):
        t = tokens[i:i + batch]
        c = None if cond is None else cond[i:i + batch]
        x = model.embed(t, c, torch.zeros_like(t, dtype=torch.bool))            # (b, R C + 1, W)
        for b in model.blocks[:block]:
            x = b(x)
        if block == len(model.blocks):
            x = model.norm(x)
        out.append(x[:, :-1].mean(1).float().cpu())                            # (b, W) CLAP token left out
    return torch.cat(out)


@torch.inference_mode()
def probe_feature_sets(pipe, wavs: torch.Tensor, batch: int = 32) -> dict:
    """Every feature set of the probe table for clips (N, T): name -> (N, D) on the CPU."""
    import specmaskgit
    model = pipe.transformer
    if not hasattr(model, "blocks"):
        raise UserError("the probe reads the transformer's blocks: run it with --device cpu --dtype fp32.")
    torch.manual_seed(0)
    untrained = specmaskgit.SpecMaskGIT(model.cfg).to(pipe.device).eval()     # same config, fresh weights
    tokens, quantised, clap_emb, stats = [], [], [], []
    for i in range(0, len(wavs), batch):
        w = wavs[i:i + batch].to(pipe.device)
        log_mel = mel.mel_spectrogram(w)                                         # (b, 80, F)
        q, _, t, _ = pipe.vq.quantize(mel.normalize(log_mel))                   # (b, D, R, C), (b, R, C)
        tokens.append(t)
        quantised.append(q.mean((2, 3)).float().cpu())                          # (b, D)
        clap_emb.append(pipe.clap.embed_audio(w).float().cpu())                 # (b, 512)
        stats.append(torch.cat([log_mel.mean(-1), log_mel.std(-1)], 1).float().cpu())   # (b, 160)
    tokens, clap_emb = torch.cat(tokens), torch.cat(clap_emb)
    middle, last = max(1, model.cfg.n_layers // 2), model.cfg.n_layers
    return {
        f"SpecMaskGIT, trained (block {middle} of {last}, mean over tokens, [M] in the CLAP slot)":
            transformer_features(model, tokens, middle),
        f"SpecMaskGIT, untrained (same config, seed 0; block {middle})": transformer_features(untrained, tokens, middle),
        f"- trained, last block (after the final LayerNorm) instead of block {middle}":
            transformer_features(model, tokens, last),
        f"- trained, block {middle}, the clip's CLAP audio embedding in the CLAP slot instead of [M]":
            transformer_features(model, tokens, middle, cond=clap_emb.to(pipe.device)),
        "TinyCLAP audio embedding": clap_emb,
        "SpecVQGAN quantised vectors (mean over the token grid)": torch.cat(quantised),
        "log-mel statistics (mean and std over time of each of the 80 bins)": torch.cat(stats),
    }


def train_probe(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = PROBE_EPOCHS, lr: float = 1e-3):
    """Table 8's probe: batch normalisation, 0.1 dropout and one linear layer, trained with a sigmoid
    cross-entropy per tag (multi-label) by Adam on frozen features x (N, D) and 0/1 labels y (N, K)."""
    with torch.random.fork_rng():                                               # the caller's stream stays as it was
        torch.manual_seed(seed)
        probe = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1]), torch.nn.Dropout(0.1),
                                    torch.nn.Linear(x.shape[1], y.shape[1]))
        opt = torch.optim.Adam(probe.parameters(), lr=lr)
        probe.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(PROBE_BATCH):
                if len(idx) < 2:                                                # batch norm needs two rows
                    continue
                loss = F.binary_cross_entropy_with_logits(probe(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return probe.eval()


def probe_scores(train_x, train_y, test_x, test_y, seeds) -> dict:
    """ROC-AUC and mAP (metrics.tagging_scores) of the probe on the test clips, one pair per seed."""
    from evaluation.metrics import tagging_scores
    runs = []
    for seed in seeds:
        probe = train_probe(train_x, train_y, seed)
        with torch.no_grad():
            runs.append(tagging_scores(torch.sigmoid(probe(test_x)), test_y))
    return {"roc_auc": [r["roc_auc"] for r in runs], "map": [r["map"] for r in runs], "tags": runs[0]["tags"]}


def run_probe(pipe, n_train: int, n_test: int, seeds, data_dir=None, labels_csv=None) -> dict:
    """The probe table: the toy world's held-out tagging (train split -> test split), or a folder of audio."""
    if data_dir:
        paths, labels, is_test, tags = read_tag_table(data_dir, labels_csv)
        wavs = torch.stack([audio_io.load_audio(p, num_samples=pipe.num_samples) for p in paths])
        train = (wavs[~is_test], labels[~is_test])
        test = (wavs[is_test], labels[is_test])
        where = f"{data_dir} ({len(tags)} tags, first {pipe.num_samples / mel.SR:.2f} s of each file)"
    else:
        train = toy_tagging_set("train", n_train, pipe.num_samples)
        test = toy_tagging_set("test", n_test, pipe.num_samples)
        where = "the toy world (12 kinds; a two-sound clip carries both)"
    t0 = time.time()
    feats_train, feats_test = probe_feature_sets(pipe, train[0]), probe_feature_sets(pipe, test[0])
    print(f"  probe features of {len(train[0]) + len(test[0])} clips: {time.time() - t0:.0f} s", flush=True)
    rows = {name: probe_scores(feats_train[name], train[1], feats_test[name], test[1], seeds) for name in feats_train}
    return {"where": where, "n_train": len(train[0]), "n_test": len(test[0]), "seeds": list(seeds), "rows": rows}


PAPER_TABLE8 = [("CLMR", 36.1, 89.4), ("MusiCNN", 38.3, 90.6), ("MERT-330M", 40.2, 91.3),
                ("MULE (contrastive)", 40.4, 91.4), ("Jukebox", 41.4, 91.5), ("SpecMaskGIT", 40.5, 91.5)]


def mean_std(values) -> str:
    v = torch.tensor(values, dtype=torch.float64) * 100
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def print_probe(r: dict) -> None:
    print(f"\n### Table 8 in miniature: linear probe on {r['where']}\n")
    print(f"{r['n_train']} training and {r['n_test']} test clips; batch norm + dropout 0.1 + one linear layer, "
          f"{PROBE_EPOCHS} epochs of Adam; mean ± std over probe seeds {r['seeds']} (in %)\n")
    rows = [[name, mean_std(s["map"]), mean_std(s["roc_auc"])] for name, s in r["rows"].items()]
    print(markdown_table(["Features", "mAP (%)", "ROC-AUC (%)"], rows))
    print("\nThe paper's Table 8 (MagnaTagATune, 50 tags): "
          + ", ".join(f"{name} {m} / {a}" for name, m, a in PAPER_TABLE8) + " (mAP / ROC-AUC, %).")
    trained, untrained = (list(r["rows"].values())[i]["roc_auc"] for i in (0, 1))
    gap = (sum(trained) / len(trained) - sum(untrained) / len(untrained)) * 100
    noise = max(torch.tensor(v, dtype=torch.float64).std().item() * 100 if len(v) > 1 else 0.0
                for v in (trained, untrained))
    verdict = "more than" if abs(gap) > 2 * noise else "not more than"
    print(f"\nTrained minus untrained ROC-AUC: {gap:+.1f} points, {verdict} twice the seeds' spread ({noise:.1f}).")
