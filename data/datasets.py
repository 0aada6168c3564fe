"""
data/datasets.py — what the models learn from: AudioCaps, and any folder of audio.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 4    the tokenizer and vocoders are trained on AudioSet, the text-to-audio model on AudioCaps
            (about 50k 10-second clips with one caption each in train, five in val/test); every clip
            is 22050 Hz mono, 217088 samples = 848 mel frames
  Sec. 3.3  the transformer is conditioned on CLAP embeddings of the *audio*, so a folder of
            uncaptioned clips is enough to train it; captions are only needed for CLAP itself

  AudioCapsDataset               AudioCaps: train.csv/val.csv/test.csv + a folder of clips (Part 1)
  FolderDataset                  every audio file under a folder, optional captions.csv (Part 2)
  make_dataset                   "toy" | "audiocaps" | a folder path -> one of these or toyworld.ToyDataset
  collate                        items -> a batch, for train.py's and its token cache's DataLoaders

The toy sound world that trains on a laptop (the paper's data stand-in) is data/toyworld.py.

In:  a folder of audio files (+ CSV captions), or "toy"
Out: dict items {"wav": (T,) float32 at 22050 Hz, "caption": str, "kind": int, "id": str}
Run alone: python data/datasets.py FOLDER   # lists what a folder (or an AudioCaps root) would give for training
"""

import csv
import math
import os
import stat
import sys

import soundfile as sf
import torch

from ground import audio_io
from mel import SR, TOY_SAMPLES, CLIP_SAMPLES
from ground.runtime import UserError
from data.toyworld import P_MIX, SPLIT_SIZES, ToyDataset


# ===================================================================================================
# Part 1. AudioCaps (Sec. 4)
# ===================================================================================================
#
# AudioCaps ships as three CSV files (train.csv, val.csv, test.csv) with the columns
#   audiocap_id, youtube_id, start_time, caption
# and no audio: every user downloads the 10-second YouTube segments themselves, and the download tools
# name the files differently. We accept all the common names, anywhere below the root folder:
#   {audiocap_id}.wav   {ytid}.wav   Y{ytid}.wav   {ytid}_{start}.wav   Y{ytid}_{start}.000_{end}.000.flac ...
# (YouTube ids are 11 characters of A-Z a-z 0-9 _ -, and may themselves start with a Y.)
# Videos disappear from YouTube, so every copy of AudioCaps misses some clips: those rows are counted,
# reported in one line, and skipped. val and test have five captions per clip: one item per caption.

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOCAPS_TRAIN_ROWS = 49_838   # rows of AudioCaps v1 train.csv (~46k of the clips can still be downloaded)


def read_csv(path: str, columns, what: str) -> list[dict]:
    """The rows of a CSV file as dicts, with the checks a hand-edited or spreadsheet-saved file needs.

    A UTF-8 byte-order mark (as spreadsheet programs write) is skipped; text in another encoding, a
    missing column, or a row with fewer fields than the header is a UserError naming the file and line.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} lacks the {what} column(s) {', '.join(missing)} "
                                f"(expected {', '.join(columns)}).")
            rows = []
            for row in reader:
                if any(row[c] is None for c in columns):
                    raise UserError(f"{path} line {reader.line_num} has fewer fields than its header "
                                    f"({', '.join(reader.fieldnames)}).")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"save it as UTF-8.") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file ({e}).") from None
    return rows


def find_audio_files(root: str) -> list:
    """Every file under `root` (recursively) whose extension soundfile may read, as sorted paths."""
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(found)


def readable(path: str) -> bool:
    """Whether `path` is a regular file that soundfile can open and that holds at least one sample (reads
    the header only). It is opened without blocking and checked before soundfile sees it: a FIFO named
    x.wav would otherwise wait forever for a writer, and a device would be read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.set_blocking(fd, True)
        try:
            return sf.info(f).frames > 0
        except Exception:  # libsndfile raises for anything that is not audio it understands
            return False


class AudioFiles(torch.utils.data.Dataset):
    """A list of (path, caption, id) read on demand: the common ground of AudioCaps and a plain folder.

    Items: {"wav": (num_samples,) float32 at 22050 Hz, "caption": str, "kind": -1, "id": str}. The clip is
    loaded (mixed to mono, resampled, cropped or zero-padded) only when the item is asked for. A file
    whose header looked fine but whose samples cannot be read (a truncated download) is reported the
    first time and replaced by the next good item, so that one bad file never stops a long training run.
    """

    def __init__(self, items: list, num_samples: int):
        self.items, self.num_samples, self.failed = items, num_samples, set()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        for j in range(i, i + len(self.items)):
            path, caption, item_id = self.items[j % len(self.items)]
            if path in self.failed:
                continue
            try:
                wav = audio_io.load_audio(path, SR, self.num_samples)
            except UserError as e:
                if not self.failed:
                    print(f"skipping unreadable clips from now on, the first: {e}")
                self.failed.add(path)
                continue
            return {"wav": wav, "caption": caption, "kind": -1, "id": item_id}
        raise UserError("none of the audio files of this dataset could be read.")


def audiocaps_names(row: dict) -> list:
    """The file stems (names without extension) under which a download tool may have saved this row."""
    ytid, cap_id = row["youtube_id"].strip(), row["audiocap_id"].strip()
    try:
        start = float(row["start_time"])
    except ValueError:
        start = math.nan
    if not (math.isfinite(start) and start >= 0):
        raise UserError(f"AudioCaps row {cap_id} has start_time {row['start_time']!r}, not a number of seconds.")
    starts = {f"{start:g}", f"{start:.1f}", f"{start:.3f}", str(int(start))}
    ends = {f"{start + 10:g}", f"{start + 10:.1f}", f"{start + 10:.3f}", str(int(start) + 10)}
    names = [cap_id]
    for y in (ytid, "Y" + ytid):
        names.append(y)
        names += [f"{y}_{s}" for s in starts]
        names += [f"{y}_{s}_{e}" for s in starts for e in ends] + [f"{y}_{s}-{e}" for s in starts for e in ends]
    return names


def youtube_id_of(stem: str) -> list:
    """The YouTube ids a file stem may start with: its first 11 characters, or the 11 after a leading Y,
    when what follows is nothing or a separator (the fallback for start times written some other way)."""
    ids = []
    for offset in (0, 1) if stem.startswith("Y") else (0,):
        rest = stem[offset + 11:]
        if len(stem) >= offset + 11 and (rest == "" or rest[0] in "_-."):
            ids.append(stem[offset:offset + 11])
    return ids


class AudioCapsDataset(AudioFiles):
    """One AudioCaps split: `root/{split}.csv` plus the clips found anywhere under `root`."""

    def __init__(self, root: str, split: str = "train", num_samples: int = CLIP_SAMPLES, n: int | None = None):
        csv_path = os.path.join(root, f"{split}.csv")
        if not os.path.isfile(csv_path):
            raise UserError(f"AudioCaps split {split!r} needs {csv_path}, which does not exist.")
        rows = read_csv(csv_path, AUDIOCAPS_COLUMNS, "AudioCaps")
        by_stem, by_ytid = {}, {}                                        # file name without extension -> path
        for path in find_audio_files(root):
            stem = os.path.splitext(os.path.basename(path))[0]
            by_stem.setdefault(stem, path)
            for ytid in youtube_id_of(stem):
                by_ytid.setdefault(ytid, path)
        items, self.missing, self.unreadable = [], [], []
        checked = {}                                                     # path -> readable? (val/test repeat clips)
        for row in rows:
            path = next((by_stem[s] for s in audiocaps_names(row) if s in by_stem), None)
            path = path or by_ytid.get(row["youtube_id"].strip())
            if path is None:
                self.missing.append(row["audiocap_id"])
                continue
            if path not in checked:
                checked[path] = readable(path)
            if not checked[path]:
                self.unreadable.append(path)
                continue
            items.append((path, row["caption"].strip(), row["audiocap_id"].strip()))
        if self.missing or self.unreadable:                              # said once, in one line
            print(f"AudioCaps {split}: {len(items)} of {len(rows)} rows usable; skipped "
                  f"{len(self.missing)} with no clip under {root} and {len(self.unreadable)} unreadable clip(s).")
        if not items:
            first = ", ".join(audiocaps_names(rows[0])[:3]) + ", ..." if rows else "-"
            raise UserError(f"none of the {len(rows)} clips of {csv_path} was found under {root} "
                            f"(names tried for the first row: {first}).")
        super().__init__(items[:n] if n is not None else items, num_samples)


# ===================================================================================================
# Part 2. Any folder of audio (Sec. 3.3: the transformer trains on audio alone)
# ===================================================================================================

class FolderDataset(AudioFiles):
    """Every audio file under `root`; captions from an optional `root/captions.csv` (columns file, caption).

    The "file" column may be the path relative to root or just the file name. Files without a caption
    get "" (the transformer is conditioned on the clip's own CLAP audio embedding, so it needs none).
    Unreadable files are counted, reported in one line and skipped.
    """

    def __init__(self, root: str, num_samples: int = CLIP_SAMPLES, n: int | None = None):
        if not os.path.isdir(root):
            raise UserError(f"the audio folder {root} does not exist.")
        captions = {}
        caption_file = os.path.join(root, "captions.csv")
        if os.path.isfile(caption_file):
            for row in read_csv(caption_file, ("file", "caption"), "captions"):
                captions[os.path.normpath(row["file"].strip())] = row["caption"].strip()
        paths = find_audio_files(root)
        good = [p for p in paths if readable(p)]
        self.unreadable = sorted(set(paths) - set(good))
        if self.unreadable:
            print(f"{root}: skipped {len(self.unreadable)} unreadable audio file(s) of {len(paths)}.")
        if not good:
            raise UserError(f"no readable audio file ({', '.join(AUDIO_EXTENSIONS)}) under {root}.")
        items = []
        for p in good[:n] if n is not None else good:
            rel = os.path.relpath(p, root)
            items.append((p, captions.get(os.path.normpath(rel), captions.get(os.path.basename(p), "")), rel))
        super().__init__(items, num_samples)


def make_dataset(data: str, split: str = "train", root: str | None = None, num_samples: int | None = None,
                 n: int | None = None, seed: int = 0, toy_mix: float = P_MIX) -> torch.utils.data.Dataset:
    """The dataset behind train.py's --data: "toy", "audiocaps" (with root = its folder), or a folder path.

    A folder with train/ val/ test/ subfolders is split by them; any other folder is one set used for
    every split (fine for training on your own sounds; its "val" numbers are then training numbers).
    toy_mix: the toy world's share of two-sound clips (another value than P_MIX: a shifted world).
    """
    if data == "toy":
        # Keep each synthesised clip: `--stage all` draws the same training clips many times over its
        # stages. 4000 clips of 65536 float32 samples = 1.05 GB; larger worlds are remade on demand.
        num_samples = num_samples or TOY_SAMPLES
        n_clips = SPLIT_SIZES[split] if n is None else n
        return ToyDataset(split, n=n, num_samples=num_samples, seed=seed, cache=n_clips * num_samples * 4 <= 1.5e9,
                          p_mix=toy_mix)
    if data == "audiocaps":
        if root is None or not os.path.isdir(root):
            raise UserError(f"AudioCaps needs its folder (with {split}.csv and the clips); {root!r} is not one.")
        return AudioCapsDataset(root, split, num_samples=num_samples or CLIP_SAMPLES, n=n)
    if not os.path.isdir(data):
        raise UserError(f"--data must be toy, audiocaps or a folder of audio; {data!r} is not a folder.")
    folder = os.path.join(data, split) if os.path.isdir(os.path.join(data, split)) else data
    return FolderDataset(folder, num_samples=num_samples or CLIP_SAMPLES, n=n)



def collate(items: list[dict]) -> dict:
    """A list of dataset items -> one batch: wavs stacked (B, T), captions kept as a list, kinds as a tensor."""
    return {"wav": torch.stack([it["wav"] for it in items]),
            "caption": [it["caption"] for it in items],
            "kind": torch.tensor([it["kind"] for it in items])}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/datasets.py FOLDER   (a folder of audio, or an AudioCaps root with train.csv)")
    try:
        root = sys.argv[1]
        ds = make_dataset("audiocaps", root=root) if os.path.isfile(os.path.join(root, "train.csv")) else make_dataset(root)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{type(ds).__name__}: {len(ds)} items; the first: {ds.items[0][0]} {ds.items[0][1]!r}")
