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

import csv
import itertools
import os
import re
import stat
import time
from dataclasses import dataclass

import numpy as np
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


# A table of tags comes from outside the project: every way it can hang, grow without bound or say
# something else than it seems to is refused where it is read, in one sentence.
MAX_TABLE_BYTES = 256 * 2 ** 20  # MagnaTagATune's annotations_final.csv (25,863 clips) is about 20 MB
MAX_LINE_BYTES = 64 * 1024       # its lines are about 1 KB (188 quoted 0/1 tags and a path)
MAX_COLUMNS = 1024               # it has 190 columns: clip_id, 188 tags, mp3_path
TOP_TAGS = 50                    # the usual MagnaTagATune benchmark (Table 8's): its 50 most frequent tags
ID_COLUMNS = ("clip_id", "id")
FILE_COLUMNS = ("path", "file", "filename", "mp3_path")
SPLIT_NAMES = {"train": "train", "training": "train", "test": "test",
               "validation": "validation", "valid": "validation", "val": "validation"}
# The usual MagnaTagATune split: the mp3s lie in 16 folders 0-f; folders 0-b train, c validation, d-f test.
MTAT_FOLDERS = {**{c: "train" for c in "0123456789ab"}, "c": "validation", **{c: "test" for c in "def"}}
READ_PROGRESS_ROWS = 10000       # a progress line every this many rows of a table


@dataclass
class TagTable:
    """A folder's clips and tags (read_tag_table): validation clips are left out (the probe has no early stop)."""
    paths: list            # N paths inside the folder
    labels: torch.Tensor   # (N, K) 0/1
    is_test: torch.Tensor  # (N,) bool
    tags: list             # K tag names
    about: str             # which tags and which split, in words


def open_regular_file(path: str, flag: str):
    """open(path, "rb") for a regular file of at most MAX_TABLE_BYTES; anything else is one sentence. The
    file is opened without blocking and checked on the open descriptor: a FIFO would hang a plain open,
    and /dev/zero never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{flag} {path} does not exist.") from None
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be read ({e.strerror or e}).") from None
    mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise UserError(f"{flag} {path} is {what}, not a file.")
    if size > MAX_TABLE_BYTES:
        os.close(fd)
        raise UserError(f"{flag} {path} holds {size / 2 ** 20:.0f} MB; a table of tags is read up to "
                        f"{MAX_TABLE_BYTES // 2 ** 20} MB (MagnaTagATune's is about 20 MB).")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def table_lines(f, name: str):
    """(line number, text) of each line of an open table: at most MAX_LINE_BYTES per line and MAX_TABLE_BYTES
    in all (a file that grows while read), UTF-8 (a BOM before the header is dropped)."""
    total = 0
    for number in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        total += len(raw)
        if total > MAX_TABLE_BYTES:
            raise UserError(f"{name} grew past {MAX_TABLE_BYTES // 2 ** 20} MB while being read.")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")                           # the BOM of "UTF-8 with BOM"
            delimiter = b"\t" if b"\t" in raw else b","
            if raw.count(delimiter) >= MAX_COLUMNS:                            # before any row is read
                raise UserError(f"{name}'s header has more than {MAX_COLUMNS} columns; a table of tags has "
                                f"fewer (MagnaTagATune's has 190).")
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{name}, line {number}: longer than {MAX_LINE_BYTES // 1024} KB; a row of tags is "
                            f"shorter (MagnaTagATune's are about 1 KB).")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{name}, line {number}: byte 0x{raw[e.start]:02x} is not UTF-8; save the table "
                            f"as UTF-8.") from None
        yield number, text.rstrip("\r\n")


def relative_clip_path(value: str, name: str, number: int) -> str:
    """A file column's value as a path inside the folder; an absolute path or a '..' is refused."""
    path = value.strip().replace("\\", "/")
    if not path:
        raise UserError(f"{name}, line {number}: the file column is empty.")
    if os.path.isabs(path) or path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise UserError(f"{name}, line {number}: {path!r} is an absolute path; the table names files inside "
                        f"--probe-data.")
    if ".." in path.split("/"):
        raise UserError(f"{name}, line {number}: {path!r} leaves --probe-data with '..'.")
    return os.path.normpath(path)


def read_tag_table(folder: str, labels_csv: str) -> TagTable:
    """A folder of audio and a table of tags, comma- or tab-separated with a header (values may be quoted):
    one column names the file (path, file, filename or mp3_path, else the first column that is not an id),
    clip_id (or id) is an id, an optional "split" column says train, validation or test, and every other
    column is a 0/1 tag. More than TOP_TAGS tags: the TOP_TAGS most frequent are kept.

    The split: the split column; else, for MagnaTagATune's annotations_final.csv (an mp3_path column), its
    usual split by the mp3's folder (0-b train, c validation, d-f test); else every fourth file is a test file.
    Validation clips are left out. A clip in both train and test is refused (it would be scored on a clip
    the probe learnt). The table is read line by line: memory follows its rows' 0/1 values, not its size."""
    if not os.path.isdir(folder):
        raise UserError(f"--probe-data {folder} is not a folder.")
    name = labels_csv
    with open_regular_file(labels_csv, "--probe-labels") as f:
        lines = table_lines(f, name)
        number, first = next(lines, (1, ""))
        delimiter = "\t" if "\t" in first else ","
        header = next(csv.reader([first], delimiter=delimiter), [])
        names = [h.strip().lower() for h in header]
        if len(header) < 2:
            raise UserError(f"{name} needs a header with a file column and at least one tag column.")
        ids = [i for i, n in enumerate(names) if n in ID_COLUMNS]
        file_col = next((names.index(c) for c in FILE_COLUMNS if c in names),
                        next((i for i in range(len(names)) if i not in ids and names[i] != "split"), 0))
        split_col = names.index("split") if "split" in names else None
        tag_cols = [i for i in range(len(header)) if i not in (file_col, split_col) and i not in ids]
        if not tag_cols:
            raise UserError(f"{name}'s header has no tag column.")
        paths, bits, splits = [], [], []
        for number, text in lines:
            if not text.strip():
                continue
            row = next(csv.reader([text], delimiter=delimiter))
            if len(row) != len(header):
                raise UserError(f"{name}, line {number}: {len(row)} fields where the header has {len(header)}.")
            values = [row[c].strip() for c in tag_cols]
            bad = next((k for k, v in enumerate(values) if v not in ("0", "1")), None)
            if bad is not None:
                raise UserError(f"{name}, line {number}: tag {header[tag_cols[bad]]!r} is "
                                f"{row[tag_cols[bad]][:40]!r}, not 0 or 1.")
            paths.append(relative_clip_path(row[file_col], name, number))
            bits.append("".join(values).encode())                               # K bytes a row
            if split_col is not None:
                split = SPLIT_NAMES.get(row[split_col].strip().lower())
                if split is None:
                    raise UserError(f"{name}, line {number}: split {row[split_col][:40]!r} is none of train, "
                                    f"validation and test.")
                splits.append(split)
            if len(paths) % READ_PROGRESS_ROWS == 0:
                print(f"  read {len(paths)} rows of {name}", flush=True)
    if len(paths) < 2:
        raise UserError(f"{name} needs a header and at least two clips.")
    labels = torch.from_numpy(np.frombuffer(b"".join(bits), np.uint8).reshape(len(paths), len(tag_cols)) - 48)
    del bits
    tags_about = f"all {len(tag_cols)} tags"
    if len(tag_cols) > TOP_TAGS:                                                 # the most frequent, ties by column
        counts = labels.sum(0, dtype=torch.int64)
        keep = sorted(sorted(range(len(tag_cols)), key=lambda k: -counts[k].item())[:TOP_TAGS])
        labels, tag_cols = labels[:, keep], [tag_cols[k] for k in keep]
        tags_about = f"the {TOP_TAGS} most frequent of {counts.numel()} tags"
    if split_col is not None:
        split_about = "the table's split column"
    elif names[file_col] == "mp3_path":
        folders = [p.split("/", 1)[0].lower() if "/" in p else "" for p in paths]
        wrong = next((p for p, d in zip(paths, folders) if d not in MTAT_FOLDERS), None)
        if wrong is not None:
            raise UserError(f"{name}: {wrong!r} is not in one of MagnaTagATune's folders 0-f, which its usual "
                            f"split follows; add a split column.")
        splits = [MTAT_FOLDERS[d] for d in folders]
        split_about = "MagnaTagATune's usual split by folder: 0-b train, c validation (left out), d-f test"
    else:
        splits = ["test" if i % 4 == 3 else "train" for i in range(len(paths))]
        split_about = "no split column: every fourth file is a test file"
    train = {p for p, s in zip(paths, splits) if s == "train"}
    both = next((p for p, s in zip(paths, splits) if s == "test" and p in train), None)
    if both is not None:
        raise UserError(f"{name}: {both} is both a training and a test clip; the probe would be scored on a "
                        f"clip it learnt.")
    kept = [i for i, s in enumerate(splits) if s != "validation"]
    is_test = torch.tensor([splits[i] == "test" for i in kept], dtype=torch.bool)
    if is_test.all() or not is_test.any():
        raise UserError(f"{name} must give both training and test clips ({split_about}).")
    about = (f"{tags_about}; {split_about}: {int((~is_test).sum())} train, "
             f"{len(paths) - len(kept)} validation, {int(is_test.sum())} test")
    print(f"  {name}: {len(paths)} clips, {about}", flush=True)
    return TagTable([os.path.join(folder, paths[i]) for i in kept], labels[kept].float(), is_test,
                    [header[c] for c in tag_cols], about)


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


def untrained_copy(model):
    """The same config with fresh weights (seed 0): the untrained row of the table."""
    import specmaskgit
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return specmaskgit.SpecMaskGIT(model.cfg).to(next(model.parameters()).device).eval()


@torch.inference_mode()
def probe_feature_sets(pipe, wavs: torch.Tensor, batch: int = 32, untrained=None) -> dict:
    """Every feature set of the probe table for clips (N, T): name -> (N, D) on the CPU."""
    model = pipe.transformer
    if not hasattr(model, "blocks"):
        raise UserError("the probe reads the transformer's blocks: run it with --device cpu --dtype fp32.")
    untrained = untrained if untrained is not None else untrained_copy(model)
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


LOAD_BATCH = 16          # clips of a folder loaded, cut into windows and featured at a time
MAX_WINDOWS = 16         # windows read per clip (MagnaTagATune's 29 s clips are 9 windows of the toy's 2.97 s)
PROGRESS_SECONDS = 10    # a progress line at most this often


def clip_windows(path: str, num_samples: int) -> torch.Tensor:
    """A file cut into its whole windows of num_samples (at most MAX_WINDOWS; a shorter file is one
    zero-padded window): (W, num_samples). Only those samples are read."""
    import soundfile as sf
    try:
        info = sf.info(path)
        seconds = info.frames / info.samplerate
    except Exception:                                                           # load_audio says what is wrong
        seconds = 0.0
    n = min(MAX_WINDOWS, max(1, int(seconds * mel.SR) // num_samples))
    return audio_io.load_audio(path, num_samples=n * num_samples).view(n, num_samples)


def folder_features(pipe, paths: list, untrained) -> dict:
    """Every feature set for each file of `paths`, LOAD_BATCH files at a time: a clip's features are the
    mean of its windows' (the whole clip is scored, not its first seconds). name -> (N, D)."""
    out, t0, last = {}, time.time(), time.time()
    for i in range(0, len(paths), LOAD_BATCH):
        windows = [clip_windows(p, pipe.num_samples) for p in paths[i:i + LOAD_BATCH]]
        owner = torch.cat([torch.full((len(w),), k) for k, w in enumerate(windows)])     # (W,) clip of each window
        counts = torch.bincount(owner).unsqueeze(1).float()                             # (b, 1)
        feats = probe_feature_sets(pipe, torch.cat(windows), untrained=untrained)        # name -> (W, D)
        for name, f in feats.items():
            mean = torch.zeros(len(windows), f.shape[1]).index_add_(0, owner, f) / counts   # (b, D)
            out.setdefault(name, []).append(mean)
        done = min(i + LOAD_BATCH, len(paths))
        if time.time() - last > PROGRESS_SECONDS or done == len(paths):
            print(f"  probe features: {done} / {len(paths)} clips ({time.time() - t0:.0f} s)", flush=True)
            last = time.time()
    return {name: torch.cat(parts) for name, parts in out.items()}


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
    t0 = time.time()
    if data_dir:
        table = read_tag_table(data_dir, labels_csv)
        missing = next((p for p in table.paths if not os.path.isfile(p)), None)   # before minutes of features
        if missing is not None:
            raise UserError(f"{labels_csv} names {missing}, which is not a file in --probe-data.")
        feats = folder_features(pipe, table.paths, untrained_copy(pipe.transformer))
        feats_train = {name: f[~table.is_test] for name, f in feats.items()}
        feats_test = {name: f[table.is_test] for name, f in feats.items()}
        train, test = (None, table.labels[~table.is_test]), (None, table.labels[table.is_test])
        where = (f"{data_dir} ({table.about}; each clip scored whole: its features are the mean over its "
                 f"{pipe.num_samples / mel.SR:.2f} s windows, up to {MAX_WINDOWS})")
    else:
        train = toy_tagging_set("train", n_train, pipe.num_samples)
        test = toy_tagging_set("test", n_test, pipe.num_samples)
        where = "the toy world (12 kinds; a two-sound clip carries both)"
        feats_train, feats_test = probe_feature_sets(pipe, train[0]), probe_feature_sets(pipe, test[0])
    print(f"  probe features of {len(train[1]) + len(test[1])} clips: {time.time() - t0:.0f} s", flush=True)
    rows = {name: probe_scores(feats_train[name], train[1], feats_test[name], test[1], seeds) for name in feats_train}
    return {"where": where, "n_train": len(train[1]), "n_test": len(test[1]), "seeds": list(seeds), "rows": rows}


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
    print("\nThe paper's Table 8 (MagnaTagATune, its 50 most frequent tags): "
          + ", ".join(f"{name} {m} / {a}" for name, m, a in PAPER_TABLE8) + " (mAP / ROC-AUC, %).")
    trained, untrained = (list(r["rows"].values())[i]["roc_auc"] for i in (0, 1))
    gap = (sum(trained) / len(trained) - sum(untrained) / len(untrained)) * 100
    if len(r["seeds"]) < 2:                                   # one seed has no spread to weigh the gap against
        print(f"\nTrained minus untrained ROC-AUC: {gap:+.1f} points; one probe seed gives no spread to tell "
              f"it from the noise (--probe-seeds 2 or more).")
        return
    noise = max(torch.tensor(v, dtype=torch.float64).std().item() * 100 for v in (trained, untrained))
    verdict = "more than" if abs(gap) > 2 * noise else "not more than"
    print(f"\nTrained minus untrained ROC-AUC: {gap:+.1f} points, {verdict} twice the seeds' spread ({noise:.1f}).")
