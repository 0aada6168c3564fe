"""Tests for data.py: the toy sound world, its judge, and the AudioCaps and folder loaders."""

import csv
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

import data
from runtime import UserError

SR = 22050
SHORT = 8192          # 0.37 s: enough to check captions and levels quickly

# Words that name each kind, written here independently of data.py's caption lists.
KEYWORDS = {
    "rain on a roof": {"rain", "rains", "raindrops", "downpour", "drizzle"},
    "a dog barking": {"dog", "puppy"},
    "birds chirping": {"bird", "birds", "songbirds"},
    "a siren": {"siren"},
    "a car engine idling": {"engine", "motor", "car"},
    "footsteps": {"footsteps", "walking", "walks", "running"},
    "a clock ticking": {"clock"},
    "a church bell": {"bell", "bells"},
    "wind blowing": {"wind"},
    "ocean waves": {"waves", "sea", "ocean", "surf"},
    "typing on a keyboard": {"typing", "types", "keyboard"},
    "a phone ringing": {"phone", "telephone"},
}


def words(text: str) -> set:
    return set(re.findall(r"[a-z-]+", text.lower()))


# ---------------------------------------------------------------------------------------------------
# The toy world
# ---------------------------------------------------------------------------------------------------

def test_kinds_are_the_twelve_named_sounds_in_order():
    assert data.KINDS[:12] == list(KEYWORDS)
    assert len(data.SYNTHS) == len(data.KINDS)


def test_same_seed_and_index_give_the_same_clip():
    wav1, cap1, kinds1 = data.toy_clip(3, 17, SHORT)
    data.toy_clip(3, 18, SHORT)                       # other calls in between change nothing
    wav2, cap2, kinds2 = data.toy_clip(3, 17, SHORT)
    assert torch.equal(wav1, wav2) and cap1 == cap2 and kinds1 == kinds2
    ds = data.ToyDataset("val", n=30, num_samples=SHORT, seed=4)
    wav3, cap3, kinds3 = data.toy_clip(ds.seed, 17, SHORT)           # a dataset item is its split's toy_clip
    assert torch.equal(ds[17]["wav"], wav3) and ds[17]["caption"] == cap3 and ds[17]["kind"] == kinds3[0]


def test_different_indices_seeds_and_splits_differ():
    a = data.toy_clip(0, 5, SHORT)[0]
    assert not torch.allclose(a, data.toy_clip(0, 6, SHORT)[0])
    assert not torch.allclose(a, data.toy_clip(1, 5, SHORT)[0])
    splits = [data.ToyDataset(s, n=10, num_samples=SHORT)[5]["wav"] for s in ("train", "val", "test")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(splits[i], splits[j])


def test_clips_are_float32_finite_and_peak_normalised():
    for n in (SHORT, data.TOY_SAMPLES):
        for i in range(24 if n == SHORT else 12):
            wav, _, _ = data.toy_clip(0, i, n)
            assert wav.dtype == torch.float32 and wav.shape == (n,)
            assert torch.isfinite(wav).all()
            peak = wav.abs().max().item()
            assert 0.5 - 1e-4 <= peak <= 0.9 + 1e-4
            assert wav.pow(2).mean().sqrt() > 0.01 * peak          # not a near-silent clip with one spike


def test_full_size_clip_length():
    wav, _, _ = data.toy_clip(0, 0, 217088)
    assert wav.shape == (217088,) and torch.isfinite(wav).all()


def test_every_kind_appears_and_every_caption_names_its_kinds():
    seen, mixed = set(), 0
    for i in range(240):
        _, caption, kinds = data.toy_clip(1, i, 2048)
        seen.update(kinds)
        mixed += len(kinds) == 2
        assert 1 <= len(kinds) <= 2 and len(set(kinds)) == len(kinds)
        said = words(caption)
        for k in kinds:
            assert said & KEYWORDS[data.KINDS[k]], (caption, data.KINDS[k])
        if len(kinds) == 1:                                          # and names nothing that is not there
            others = set().union(*(KEYWORDS[name] for j, name in enumerate(data.KINDS[:12]) if j != kinds[0]))
            assert not said & others, caption
    assert seen == set(range(len(data.KINDS)))
    assert 0.15 < mixed / 240 < 0.35                                # about a quarter mix two kinds


def test_captions_vary_for_one_kind():
    captions = {data.toy_clip(2, 12 * i, 2048)[1] for i in range(40)}   # every 12th index: the same first kind
    assert len(captions) >= 5


def test_paraphrases_are_new_sentences_made_of_known_words():
    training = set()
    for options in data.CAPTIONS.values():
        for phrases in options.values():
            training.update(phrases)
    training.update(data.toy_clip(7, i, 2048)[1] for i in range(300))
    vocabulary = set().union(*(words(c) for c in training))
    for kind in data.KINDS[:12]:
        assert len(data.PARAPHRASES[kind]) >= 2
        for p in data.PARAPHRASES[kind]:
            assert p not in training, p
            assert words(p) <= vocabulary, (p, words(p) - vocabulary)
            assert words(p) & KEYWORDS[kind], p


def test_toy_dataset_items():
    ds = data.ToyDataset("train", n=13, num_samples=SHORT)
    assert len(ds) == 13
    item = ds[12]
    assert set(item) == {"wav", "caption", "kind", "id"}
    assert item["wav"].shape == (SHORT,) and isinstance(item["caption"], str) and item["caption"]
    assert isinstance(item["kind"], int) and 0 <= item["kind"] < len(data.KINDS)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["wav"].shape == (4, SHORT) and batch["kind"].dtype == torch.long and len(batch["caption"]) == 4
    with pytest.raises(UserError):
        data.ToyDataset("dev")


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------

def test_nearest_centroid_on_points_with_known_centres():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 100.0], [5.0, 0.0, 100.0], [0.0, 5.0, 300.0]])   # 3rd feature in other units
    labels = torch.arange(3).repeat_interleave(50)
    points = centres[labels] + torch.randn(150, 3, generator=g) * torch.tensor([1.0, 1.0, 20.0])
    judge = data.NearestCentroid().fit(points, labels)
    assert torch.equal(judge.predict(centres), torch.arange(3))
    assert judge.predict(centres[2]).item() == 2                    # one vector in, one label out
    # the centroids are the class means after scaling every feature by its spread
    z = (points - points.mean(0)) / points.std(0)
    assert torch.allclose(judge.centroids[1], z[labels == 1].mean(0), atol=1e-5)


def test_judge_tells_the_toy_kinds_apart_on_held_out_clips(tmp_path):
    judge = data.train_judge(per_kind=20)
    wavs, kinds = data.single_kind_clips("test", 10)
    assert set(kinds.tolist()) == set(range(len(data.KINDS)))
    features = data.mel_features(wavs)
    assert features.shape == (len(kinds), features.shape[1]) and torch.isfinite(features).all()
    accuracy = (judge.predict(features) == kinds).float().mean().item()
    print(f"nearest-centroid accuracy on {len(kinds)} held-out single-kind toy clips: {accuracy:.3f}")
    assert accuracy > 0.85                                           # chance is 1/12 = 0.083
    # the judge travels in a checkpoint as plain tensors
    path = tmp_path / "judge.pt"
    torch.save(judge.state_dict(), path)
    again = data.NearestCentroid.from_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(again.predict(features), judge.predict(features))
    assert torch.allclose(data.mel_features(wavs[0]), features[0], atol=1e-4)


def test_judge_features_ignore_loudness():
    wav = data.toy_clip(0, 1)[0]
    assert torch.allclose(data.mel_features(wav), data.mel_features(0.5 * wav), atol=0.05)


# ---------------------------------------------------------------------------------------------------
# AudioCaps and folders
# ---------------------------------------------------------------------------------------------------

def write_tone(path, freq, sr=SR, seconds=0.5, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), sr, format=fmt)


def tone_of(wav):
    """The frequency (Hz) of the strongest FFT bin: tells which test file an item came from."""
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    return np.fft.rfftfreq(len(wav), 1 / SR)[spectrum.argmax()]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def audiocaps_root(tmp_path):
    """A tiny AudioCaps: 8 rows, clips saved under the names different download tools use."""
    root = tmp_path / "audiocaps"
    root.mkdir()
    rows = [  # audiocap_id, youtube_id, start_time, caption ; the tone (Hz) of the file it must find
        ("101", "aaaaaaaaaaa", "30", "a dog barks"),                  # Y{ytid}_{start}.wav
        ("102", "bbbbbbbbbbb", "0", "rain falls"),                    # {ytid}_{start}.000_{end}.000.flac
        ("103", "ccccccccccc", "12", "a siren wails"),                # {ytid}.wav
        ("104", "ddddddddddd", "50", "birds sing"),                   # {audiocap_id}.wav
        ("105", "Yeeeeeeeeee", "20", "a bell tolls"),                 # a ytid starting with Y: {ytid}.ogg in a subfolder
        ("106", "fffffffffff", "10", "wind blows"),                   # missing
        ("107", "ggggggggggg", "40", "someone types"),                # corrupt file
        ("108", "aaaaaaaaaaa", "30", "a dog is barking loudly"),      # a second caption of the first clip
        ("109", "h-h_hhhhhhh", "30", "a clock ticks"),                # start in milliseconds: found by its id
    ]
    write_csv(root / "val.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
    write_tone(str(root / "audio" / "Yaaaaaaaaaaa_30.wav"), 500)
    write_tone(str(root / "audio" / "bbbbbbbbbbb_0.000_10.000.flac"), 700, fmt="FLAC")
    write_tone(str(root / "audio" / "ccccccccccc.wav"), 900)
    write_tone(str(root / "104.wav"), 1100)
    write_tone(str(root / "audio" / "more" / "Yeeeeeeeeee.ogg"), 1300, fmt="OGG")
    write_tone(str(root / "audio" / "h-h_hhhhhhh_30000_40000.wav"), 1500)
    (root / "audio" / "ggggggggggg.wav").write_bytes(b"RIFF this is not really audio" * 10)
    expected = {"101": 500, "102": 700, "103": 900, "104": 1100, "105": 1300, "108": 500, "109": 1500}
    return root, expected


def test_audiocaps_finds_clips_under_every_naming_scheme(audiocaps_root, capsys):
    root, expected = audiocaps_root
    ds = data.AudioCapsDataset(str(root), "val", num_samples=SHORT)
    report = capsys.readouterr().out.strip().splitlines()
    assert len(report) == 1 and "1 with no clip" in report[0] and "1 unreadable" in report[0]   # said once
    assert len(ds.missing) == 1 and len(ds.unreadable) == 1
    assert len(ds) == len(expected)
    found = {}
    for i in range(len(ds)):
        item = ds[i]
        assert item["kind"] == -1 and item["wav"].shape == (SHORT,) and item["wav"].dtype == torch.float32
        found[item["id"]] = (round(tone_of(item["wav"]) / 100) * 100, item["caption"])
    assert {k: v[0] for k, v in found.items()} == expected
    assert found["108"][1] == "a dog is barking loudly"


def test_audiocaps_csv_without_the_columns_is_a_user_error(tmp_path):
    write_csv(tmp_path / "train.csv", ["youtube_id", "caption"], [("aaaaaaaaaaa", "a dog barks")])
    with pytest.raises(UserError, match="audiocap_id.*start_time"):
        data.AudioCapsDataset(str(tmp_path), "train")


def test_audiocaps_without_any_clip_is_a_user_error(tmp_path):
    write_csv(tmp_path / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
              [("1", "aaaaaaaaaaa", "0", "a dog barks")])
    with pytest.raises(UserError):
        data.AudioCapsDataset(str(tmp_path), "test")
    with pytest.raises(UserError):
        data.AudioCapsDataset(str(tmp_path), "train")                 # no train.csv


def test_folder_dataset_with_and_without_captions(tmp_path, capsys):
    write_tone(str(tmp_path / "a.wav"), 400)
    write_tone(str(tmp_path / "sub" / "b.flac"), 800, fmt="FLAC")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.ogg").write_bytes(b"not really an ogg file")
    ds = data.FolderDataset(str(tmp_path), num_samples=SHORT)
    assert len(ds) == 2 and len(ds.unreadable) == 1
    assert "1 unreadable" in capsys.readouterr().out
    assert [ds[i]["caption"] for i in range(2)] == ["", ""]
    assert [round(tone_of(ds[i]["wav"]) / 100) * 100 for i in range(2)] == [400, 800]

    write_csv(tmp_path / "captions.csv", ["file", "caption"], [("a.wav", "a low hum"), ("sub/b.flac", "a high hum")])
    ds = data.FolderDataset(str(tmp_path), num_samples=SHORT)
    assert {ds[i]["id"]: ds[i]["caption"] for i in range(2)} == {"a.wav": "a low hum", os.path.join("sub", "b.flac"): "a high hum"}
    assert ds[0]["kind"] == -1


def test_a_clip_that_fails_when_loaded_is_replaced_by_the_next(tmp_path, capsys):
    bad = np.full(1000, np.nan, dtype=np.float32)                   # a header soundfile accepts, NaN samples
    sf.write(str(tmp_path / "a_bad.wav"), bad, SR, subtype="FLOAT")
    write_tone(str(tmp_path / "b_good.wav"), 600)
    ds = data.FolderDataset(str(tmp_path), num_samples=SHORT)
    assert len(ds) == 2                                              # the header alone looks fine
    first, second = ds[0], ds[0]
    assert first["id"] == "b_good.wav" and second["id"] == "b_good.wav"
    assert len(capsys.readouterr().out.strip().splitlines()) == 1   # reported once


def test_make_dataset(tmp_path, audiocaps_root):
    toy = data.make_dataset("toy", "val", num_samples=SHORT, n=5)
    assert isinstance(toy, data.ToyDataset) and len(toy) == 5 and toy[0]["wav"].shape == (SHORT,)
    root, expected = audiocaps_root
    ac = data.make_dataset("audiocaps", "val", root=str(root), num_samples=SHORT)
    assert isinstance(ac, data.AudioCapsDataset) and len(ac) == len(expected)
    write_tone(str(tmp_path / "mine" / "x.wav"), 300)
    assert len(data.make_dataset(str(tmp_path / "mine"), "train", num_samples=SHORT)) == 1
    with pytest.raises(UserError, match="folder"):
        data.make_dataset(str(tmp_path / "no_such_folder"), "train")
    with pytest.raises(UserError):
        data.make_dataset("audiocaps", "train", root=None)


def test_toy_training_clips_are_made_once_and_kept_unless_they_would_not_fit_in_1_5_gb():
    small = data.make_dataset("toy", "train", n=4)
    first = small[2]
    assert small[2] is first                                    # kept, not remade
    assert torch.equal(first["wav"], data.toy_clip(small.seed, 2, small.num_samples)[0])
    big = data.make_dataset("toy", "train")                     # 10000 clips x 65536 x 4 B > 1.5 GB
    assert big.cache is None
