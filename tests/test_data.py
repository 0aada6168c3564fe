"""Tests for data/datasets.py: the AudioCaps and folder loaders, and make_dataset; a FIFO in a data folder,
and what train.py says of a folder whose captions are missing."""

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from data import datasets as data
from data import toyworld
from ground.runtime import UserError
import mel
import train
from conftest import refused

SR = 22050
SHORT = 8192          # 0.37 s: enough to check loading quickly


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


def one_sentence(e: UserError) -> str:
    text = str(e.value)
    assert "\n" not in text and text.endswith("."), text
    return text


AUDIOCAPS_HEADER = "audiocap_id,youtube_id,start_time,caption\r\n"


def test_csv_files_as_spreadsheets_save_them(tmp_path):
    """A UTF-8 byte-order mark is read past; a short row, another encoding or a start_time of nan is one
    sentence naming the file, in AudioCaps' train.csv and in a folder's captions.csv alike."""
    write_tone(str(tmp_path / "aaaaaaaaaaa.wav"), 500)
    train = tmp_path / "train.csv"
    train.write_bytes(b"\xef\xbb\xbf" + (AUDIOCAPS_HEADER + "1,aaaaaaaaaaa,0,a caf\u00e9 dog barks\r\n").encode())
    ds = data.AudioCapsDataset(str(tmp_path), "train", num_samples=SHORT)
    assert len(ds) == 1 and ds[0]["caption"] == "a caf\u00e9 dog barks"
    bad_rows = {"short row": (AUDIOCAPS_HEADER + "1,aaaaaaaaaaa,0\r\n").encode(),
                "latin-1": (AUDIOCAPS_HEADER + "1,aaaaaaaaaaa,0,a caf\u00e9 dog\r\n").encode("latin-1"),
                "nan start": (AUDIOCAPS_HEADER + "1,aaaaaaaaaaa,nan,a dog\r\n").encode()}
    for name, content in bad_rows.items():
        train.write_bytes(content)
        with pytest.raises(UserError) as e:
            data.AudioCapsDataset(str(tmp_path), "train", num_samples=SHORT)
        text = one_sentence(e)
        expected = {"short row": "train.csv line 2", "latin-1": "train.csv is not UTF-8", "nan start": "start_time 'nan'"}
        assert expected[name] in text, text

    folder = tmp_path / "clips"
    write_tone(str(folder / "a.wav"), 400)
    captions = folder / "captions.csv"
    captions.write_bytes(b"\xef\xbb\xbf" + "file,caption\r\na.wav,\u00f1and\u00fa calling\r\n".encode())
    assert data.FolderDataset(str(folder), num_samples=SHORT)[0]["caption"] == "\u00f1and\u00fa calling"
    for content in (b"file,caption\r\na.wav\r\n", "file,caption\r\na.wav,\u00f1and\u00fa\r\n".encode("latin-1")):
        captions.write_bytes(content)
        with pytest.raises(UserError) as e:
            data.FolderDataset(str(folder), num_samples=SHORT)
        assert "captions.csv" in one_sentence(e)


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
    assert isinstance(toy, toyworld.ToyDataset) and len(toy) == 5 and toy[0]["wav"].shape == (SHORT,)
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
    assert torch.equal(first["wav"], toyworld.toy_clip(small.seed, 2, small.num_samples)[0])
    big = data.make_dataset("toy", "train")                     # 10000 clips x 65536 x 4 B > 1.5 GB
    assert big.cache is None


# ---------------------------------------------------------------------------------------------------
# Folders a user might point --data at
# ---------------------------------------------------------------------------------------------------

def test_a_fifo_in_a_data_folder_is_skipped_without_hanging(tmp_path, alarm):
    sf.write(tmp_path / "good.wav", np.zeros(5000, np.float32), mel.SR)
    os.mkfifo(tmp_path / "x.wav")
    alarm(20)
    ds = data.FolderDataset(str(tmp_path), num_samples=4096)
    assert [os.path.basename(p) for p, _, _ in ds.items] == ["good.wav"]


def test_clap_on_a_folder_without_captions_names_the_missing_captions(tmp_path, capsys):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"s{i}.wav", 0.1 * np.ones(5000, np.float32), mel.SR)
    refused(capsys, train.main, ["--data", str(folder), "--stage", "clap", "--clap", "tiny", "--preset", "tiny",
                                 "--num-samples", "4096", "--steps", "1", "--out", str(tmp_path / "r")],
            ["captions.csv"], tmp_path / "r")
