"""evaluate.py's inputs from outside the project, as a hostile user would hand them: a table of tags
(--probe-labels) that hangs, grows or lies, a folder whose splits overlap or escape, a span model
(--magnet-ckpt) of another grid or VQGAN, a training log (--curve) with broken rows. Each is one sentence
and exit code 2, or a row skipped and counted, before any work."""

import json
import os
import threading
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate
import mel
from evaluation import curve, magnet_table, probe

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "toy.pt")


def one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def run_with_timeout(argv, seconds=20):
    """evaluate.main(argv) in a thread: (finished, exit code)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", evaluate.main(argv)), daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), result.get("rc"), thread


def peak_bytes(call) -> int:
    """Peak memory (bytes) that Python and numpy allocate during call(); call's UserError is swallowed."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        call()
    except probe.UserError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


# ---------------------------------------------------------------------------------------------------
# --probe-labels: the table's file itself
# ---------------------------------------------------------------------------------------------------

def test_a_fifo_as_the_table_returns_promptly_with_one_sentence(tmp_path, capsys):
    fifo = str(tmp_path / "labels.csv")
    os.mkfifo(fifo)
    finished, rc, thread = run_with_timeout(["--probe-data", str(tmp_path), "--probe-labels", fifo])
    if not finished:                                   # let the hung open go: a writer that closes at once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert finished and rc == 2
    assert "FIFO" in one_sentence(capsys)


def test_dev_zero_as_the_table_is_refused_before_it_is_read(tmp_path, capsys):
    assert evaluate.main(["--probe-data", str(tmp_path), "--probe-labels", "/dev/zero"]) == 2
    assert "character device" in one_sentence(capsys)


def test_a_huge_table_and_an_endless_line_are_refused_within_a_bounded_memory(tmp_path):
    huge = str(tmp_path / "huge.csv")
    with open(huge, "wb") as f:                        # a sparse GB of zero bytes
        f.truncate(2 ** 30)
    with pytest.raises(probe.UserError, match="MB"):
        probe.read_tag_table(str(tmp_path), huge)
    endless = write(tmp_path / "endless.csv", "file,tag\n" + "0" * (8 * 2 ** 20))
    assert peak_bytes(lambda: probe.read_tag_table(str(tmp_path), endless)) < 2 * 2 ** 20
    with pytest.raises(probe.UserError, match="longer than"):
        probe.read_tag_table(str(tmp_path), endless)


def test_a_wide_table_is_refused_at_its_header_before_any_row_is_allocated(tmp_path):
    # 348 KB: a header of 40,000 columns and a thousand short rows
    wide = write(tmp_path / "wide.csv", "file," + ",".join(f"t{i}" for i in range(40000)) + "\n" + "a.wav\n" * 1000)
    assert os.path.getsize(wide) < 400 * 1024
    assert peak_bytes(lambda: probe.read_tag_table(str(tmp_path), wide)) < 2 * 2 ** 20
    with pytest.raises(probe.UserError, match="more than 1024 columns"):
        probe.read_tag_table(str(tmp_path), wide)


def test_a_byte_that_is_not_utf8_is_one_sentence(tmp_path, capsys):
    table = write(tmp_path / "labels.csv", b"file,tag\nclip\xff.wav,1\nb.wav,0\nc.wav,1\nd.wav,0\n", "wb")
    assert evaluate.main(["--probe-data", str(tmp_path), "--probe-labels", table]) == 2
    err = one_sentence(capsys)
    assert "line 2" in err and "UTF-8" in err


# ---------------------------------------------------------------------------------------------------
# --probe-data: what the table says
# ---------------------------------------------------------------------------------------------------

def table(tmp_path, rows, header="file,tag,split"):
    return write(tmp_path / "labels.csv", header + "\n" + "\n".join(rows) + "\n")


def test_a_clip_in_both_the_training_and_the_test_split_is_refused(tmp_path):
    path = table(tmp_path, ["a.wav,1,train", "b.wav,0,train", "./a.wav,1,test", "c.wav,0,test"])
    with pytest.raises(probe.UserError, match="both a training and a test clip"):
        probe.read_tag_table(str(tmp_path), path)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.wav", "sub/../../outside.wav", "C:/x.wav"])
def test_a_path_that_leaves_the_folder_is_refused(tmp_path, name):
    path = table(tmp_path, [f"{name},1,train", "b.wav,0,train", "c.wav,1,test"])
    with pytest.raises(probe.UserError, match="absolute path|leaves --probe-data"):
        probe.read_tag_table(str(tmp_path), path)


def test_validation_clips_are_neither_trained_on_nor_tested_and_an_unknown_split_is_refused(tmp_path):
    path = table(tmp_path, ["a.wav,1,train", "b.wav,0,train", "v.wav,1,validation", "c.wav,1,test"])
    t = probe.read_tag_table(str(tmp_path), path)
    assert [os.path.basename(p) for p in t.paths] == ["a.wav", "b.wav", "c.wav"]
    assert t.is_test.tolist() == [False, False, True] and "1 validation" in t.about
    path = table(tmp_path, ["a.wav,1,train", "b.wav,0,dev", "c.wav,1,test"])
    with pytest.raises(probe.UserError, match="'dev' is none of train, validation and test"):
        probe.read_tag_table(str(tmp_path), path)


def test_a_bom_and_a_clip_id_first_header_give_the_right_file_and_tag_columns(tmp_path):
    rows = [f"{i},{i % 2},clip{i}.wav,{'test' if i % 4 == 3 else 'train'}" for i in range(8)]
    path = write(tmp_path / "labels.csv", ("\ufeffclip_id,guitar,file,split\n" + "\n".join(rows) + "\n").encode(), "wb")
    t = probe.read_tag_table(str(tmp_path), path)
    assert t.tags == ["guitar"] and t.labels[:, 0].tolist() == [i % 2 for i in range(8)]
    assert os.path.basename(t.paths[0]) == "clip0.wav"
    rows = [f"{i},clip{i}.wav,{i % 2}" for i in range(8)]     # no named file column: the first that is not the id
    path = write(tmp_path / "labels.csv", ("\ufeffclip_id,where,guitar\n" + "\n".join(rows) + "\n").encode(), "wb")
    t = probe.read_tag_table(str(tmp_path), path)
    assert t.tags == ["guitar"] and os.path.basename(t.paths[0]) == "clip0.wav"


def test_one_probe_seed_gives_no_verdict_on_the_seeds_spread(capsys):
    rows = {name: {"map": [0.5], "roc_auc": [auc], "tags": 3} for name, auc in (("trained", 0.8), ("untrained", 0.6))}
    probe.print_probe({"where": "x", "n_train": 4, "n_test": 2, "seeds": [0], "rows": rows})
    out = capsys.readouterr().out
    assert "+20.0 points" in out and "spread (" not in out and "more than" not in out


# ---------------------------------------------------------------------------------------------------
# MagnaTagATune's real annotations_final.csv
# ---------------------------------------------------------------------------------------------------

def write_mtat_table(path, folders, n_tags=60):
    """annotations_final.csv's layout: TAB-separated, every value quoted, clip_id first, mp3_path last.
    Tag k is on for clip i when (i * 7 + k) % (k + 2) == 0 or i < n_tags - k: distinct frequencies."""
    tags = [f"tag {k}" for k in range(n_tags)]
    lines = ["\t".join(f'"{h}"' for h in ["clip_id"] + tags + ["mp3_path"])]
    on = np.zeros((len(folders), n_tags), int)
    for i, folder in enumerate(folders):
        on[i] = [int(i * (k + 3) % 5 == 0 or k >= i) for k in range(n_tags)]
        lines.append("\t".join(f'"{v}"' for v in [str(i * 3 + 2)] + [str(b) for b in on[i]]
                               + [f"{folder}/artist-album-{i:02d}-song.mp3"]))
    write(path, "\n".join(lines) + "\n")
    return tags, on


def test_magnatagatunes_real_table_gives_its_top_50_tags_and_its_usual_split(tmp_path, capsys):
    folders = ["0", "3", "b", "c", "c", "d", "e", "f", "0", "a", "d", "9"]
    tags, on = write_mtat_table(tmp_path / "annotations_final.csv", folders)
    t = probe.read_tag_table(str(tmp_path), str(tmp_path / "annotations_final.csv"))
    counts = on.sum(0)                                   # independently: the 50 most frequent, ties by column
    top = sorted(sorted(range(len(tags)), key=lambda k: (-counts[k], k))[:50])
    assert t.tags == [tags[k] for k in top] and t.labels.shape == (10, 50)
    kept = [i for i, f in enumerate(folders) if f != "c"]      # c is validation: left out
    assert t.labels.tolist() == on[kept][:, top].tolist()
    assert t.is_test.tolist() == [folders[i] in "def" for i in kept]
    assert t.paths[0] == os.path.join(str(tmp_path), "0", "artist-album-00-song.mp3")
    out = capsys.readouterr().out
    assert "the 50 most frequent of 60 tags" in out and "0-b train, c validation" in out
    n_train, n_test = sum(f in "0123456789ab" for f in folders), sum(f in "def" for f in folders)
    assert f"{n_train} train, {folders.count('c')} validation, {n_test} test" in out


def test_reading_magnatagatunes_25863_rows_stays_small_and_reports_progress(tmp_path, capsys):
    path = str(tmp_path / "annotations_final.csv")
    tags = [f"tag{k}" for k in range(188)]
    row_tail = "\t".join('"1"' if k % 9 == 0 else '"0"' for k in range(188))
    with open(path, "w") as f:
        f.write("\t".join(f'"{h}"' for h in ["clip_id"] + tags + ["mp3_path"]) + "\n")
        for i in range(25863):
            f.write(f'"{i}"\t{row_tail}\t"{"0123456789abcdef"[i % 16]}/clip-{i}.mp3"\n')
    holder = {}
    peak = peak_bytes(lambda: holder.setdefault("t", probe.read_tag_table(str(tmp_path), path)))
    assert peak < 2 * 2 ** 30
    t = holder["t"]
    assert t.labels.shape[1] == 50 and len(t.paths) == 25863 - 25863 // 16 - (25863 % 16 > 12)
    assert "read 20000 rows" in capsys.readouterr().out


def test_a_folder_is_read_in_batches_and_each_clip_is_the_mean_of_its_windows(tmp_path, monkeypatch, capsys):
    n = 4096
    lengths = [3, 1, 2]                                  # whole windows per file
    paths = []
    for i, w in enumerate(lengths):
        x = np.repeat(np.arange(w, dtype=np.float32) + 1, n) * 0.1 * (i + 1)
        paths.append(str(tmp_path / f"c{i}.wav"))
        sf.write(paths[-1], x, mel.SR, subtype="FLOAT")
    batches = []

    def fake_features(pipe, windows, batch=32, untrained=None):
        batches.append(len(windows))
        return {"level": windows.mean(1, keepdim=True)}  # (W, 1)
    monkeypatch.setattr(probe, "probe_feature_sets", fake_features)
    monkeypatch.setattr(probe, "LOAD_BATCH", 2)
    pipe = type("P", (), {"num_samples": n})()
    feats = probe.folder_features(pipe, paths, untrained=None)["level"]
    expected = [0.1 * (i + 1) * (w + 1) / 2 for i, w in enumerate(lengths)]   # the mean of 1..w, scaled
    assert feats[:, 0].tolist() == pytest.approx(expected, rel=1e-4)
    assert batches == [4, 2]                             # two files' windows, then one file's
    assert "probe features: 3 / 3 clips" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# --magnet-ckpt: checked as --ckpt is, before any work
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any judge training or clip generation fails the test: the refusal must come first."""
    def work(*a, **k):
        raise AssertionError("work started before --magnet-ckpt was checked")
    for module, name in ((magnet_table, "train_judge"), (magnet_table, "run_magnet_table"),
                         (evaluate.clips, "make_embedder"), (evaluate.judges, "run_judges")):
        monkeypatch.setattr(module, name, work)


def span_checkpoint(tmp_path, **change):
    entry = torch.load(BUNDLE, weights_only=True)["transformer"]
    entry = {**entry, "config": {**entry["config"], **change.pop("config", {})}, **change}
    path = str(tmp_path / "span.pt")
    torch.save(entry, path)
    return path


@pytest.mark.parametrize("case", ["grid", "codes", "vqgan", "missing", "nan"])
def test_a_span_model_that_does_not_fit_the_bundle_is_refused_before_any_work(tmp_path, capsys, no_work, case):
    if case == "grid":
        path = span_checkpoint(tmp_path, config={"cols": 8})
    elif case == "codes":
        path = span_checkpoint(tmp_path, config={"n_codes": 512})
    elif case == "vqgan":
        path = span_checkpoint(tmp_path, vqgan_hash="0123456789abcdef")
    elif case == "nan":
        entry = torch.load(BUNDLE, weights_only=True)["transformer"]
        name = next(iter(entry["model"]))
        entry["model"][name] = entry["model"][name].clone().fill_(float("nan"))
        path = str(tmp_path / "span.pt")
        torch.save(entry, path)
    else:
        path = str(tmp_path / "none.pt")
    assert evaluate.main(["--magnet", "--magnet-ckpt", path, "--device", "cpu"]) == 2
    err = one_sentence(capsys)
    assert {"grid": "5 x 8", "codes": "512 codes", "vqgan": "another VQGAN", "missing": "does not exist",
            "nan": "NaN"}[case] in err


def test_a_span_model_that_fits_the_bundle_is_loaded(tmp_path):
    import pipeline
    pipe = pipeline.load_pipeline(BUNDLE, verbose=False)
    from ground.runtime import vqgan_hash
    path = span_checkpoint(tmp_path, vqgan_hash=vqgan_hash(torch.load(BUNDLE, weights_only=True)["vqgan"]))
    model = pipeline.load_second_transformer(path, pipe, "--magnet-ckpt")
    assert (model.cfg.rows, model.cfg.cols) == (5, 16)


# ---------------------------------------------------------------------------------------------------
# --curve: the log and every row of it
# ---------------------------------------------------------------------------------------------------

GOOD = [{"step": 0, "eval_fad": 0.5, "eval_clap_score": 0.1}, {"step": 10, "eval_fad": 0.3, "eval_clap_score": 0.2}]
BAD_ROWS = [
    b'{"step": 20, "eval_fad": NaN}', b'{"step": 30, "eval_fad": Infinity}', b'{"step": 40, "eval_fad": -1.0}',
    b'{"step": 50, "eval_fad": "low"}', b'{"eval_fad": 0.1}', b'{"step": 1e300, "eval_fad": 0.1}',
    b'{"step": -5, "eval_fad": 0.1}', b'{"step": "60", "eval_fad": 0.1}', b'{"step": 70, "eval_fad": 1e300}',
    b'{"step": 80, "eval_fad": 0.1, "eval_clap_score": "x"}', b'{"step": true, "eval_fad": 0.1}',
    b"[" * 100000 + b"]" * 100000, b'{"step": 90, "eval_fad": 0.1, "note": "caf\xe9"}',
    b'{"step": ' + b"9" * 5000 + b', "eval_fad": 0.1}',
]


def write_log(folder, lines):
    with open(os.path.join(folder, "transformer.log.jsonl"), "wb") as f:
        f.write(b"\n".join(json.dumps(r).encode() if isinstance(r, dict) else r for r in lines) + b"\n")


def test_every_broken_log_row_is_skipped_and_counted_without_a_traceback(tmp_path, capsys):
    write_log(tmp_path, GOOD[:1] + BAD_ROWS + GOOD[1:])
    assert curve.read_curve(str(tmp_path)) == [(0, 0.5, 0.1), (10, 0.3, 0.2)]
    out = capsys.readouterr().out
    assert f"skipped {len(BAD_ROWS)} line(s)" in out and "line 2:" in out
    assert evaluate.main(["--curve", str(tmp_path)]) == 0


@pytest.mark.parametrize("row", BAD_ROWS, ids=range(len(BAD_ROWS)))
def test_a_log_of_only_broken_eval_rows_is_one_sentence(tmp_path, capsys, row):
    write_log(tmp_path, [row, row])
    assert evaluate.main(["--curve", str(tmp_path)]) == 2
    assert "0 usable held-out evaluation(s)" in one_sentence(capsys)


def test_a_folder_without_a_log_a_fifo_and_dev_zero_are_named_for_what_they_are(tmp_path, capsys):
    assert evaluate.main(["--curve", str(tmp_path)]) == 2
    assert "holds no transformer.log.jsonl" in one_sentence(capsys)
    os.mkdir(tmp_path / "run")
    os.mkdir(tmp_path / "run" / "transformer.log.jsonl")
    assert evaluate.main(["--curve", str(tmp_path / "run")]) == 2
    assert "is a folder" in one_sentence(capsys)
    fifo = str(tmp_path / "log.jsonl")
    os.mkfifo(fifo)
    finished, rc, thread = run_with_timeout(["--curve", fifo])
    if not finished:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert finished and rc == 2 and "FIFO" in one_sentence(capsys)
    finished, rc, _ = run_with_timeout(["--curve", "/dev/zero"])
    assert finished and rc == 2 and "character device" in one_sentence(capsys)
