"""Checkpoint and bundle files: which stages train.py puts in one bundle, and what every loader refuses.

A bundle's stages belong together: a transformer that learnt another VQGAN's tokens (another codebook, or
a VQGAN retrained since) is never bundled or sampled with it, and a one-stage run never makes an existing
bundle worse. A file that is not what it claims (another stage, cut short, a FIFO, compressed entries,
weights that are not finite float32, a config no model could have, nonsense entries) is refused in one
sentence naming the file and the entry, before any model is built.
"""

import os
import shutil

import pytest
import torch

import pipeline
from ground import runtime
import sample
import train
import vqgan
from ground.runtime import UserError, config_from_dict, load_checkpoint, save_checkpoint
from conftest import CLAP_RUN, TOY, refused, sample_args


# ---------------------------------------------------------------------------------------------------
# A bundle's stages belong together
# ---------------------------------------------------------------------------------------------------

def test_sample_refuses_a_bundle_without_a_transformer_and_a_resume_state(toy_run, capsys, tmp_path):
    vqgan_only = str(toy_run / "vqgan_only.pt")
    assert sorted(load_checkpoint(vqgan_only, "bundle")) == ["data", "num_samples", "stage", "vqgan"]
    base = ["rain on a roof", "--out", str(tmp_path), "--ckpt"]
    refused(capsys, sample.main, base + [vqgan_only], ["no transformer", "--stage transformer"], tmp_path)
    refused(capsys, sample.main, base + [str(toy_run / "transformer.state.pt")],
            ["transformer checkpoint", "not a bundle"], tmp_path)
    half = tmp_path / "half.pt"
    half.write_bytes((toy_run / "vqgan_only.pt").read_bytes()[:5000])          # a copy cut short
    refused(capsys, sample.main, base + [str(half)], ["half.pt", "not a readable"])
    assert sorted(os.listdir(tmp_path)) == ["half.pt"]


def test_train_refuses_to_bundle_a_transformer_trained_on_another_vqgan(toy_run, capsys, tmp_path):
    """Retraining the VQGAN alone with another codebook leaves the old transformer.pt beside it."""
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    bundle_path = out / "model.pt"
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--vqgan.n_codes", "16", "--out", str(out),
                                       "--bundle", str(bundle_path)],
            ["transformer.pt", "16 codes", "--stage transformer"])
    assert not bundle_path.exists() and not [n for n in os.listdir(out) if ".partial-" in n]
    # the way out the sentence names: retrain the transformer on the new tokens, then the bundle is written;
    # the token cache is rebuilt even when the new vqgan.pt is younger than the old one by a microsecond
    old_ns = os.stat(toy_run / "vqgan.pt").st_mtime_ns
    os.utime(out / "vqgan.pt", ns=(old_ns + 1000, old_ns + 1000))
    capsys.readouterr()
    assert train.main(TOY + ["--stage", "transformer", "--steps", "1", "--out", str(out),
                             "--bundle", str(bundle_path)]) == 0
    assert "reading the token cache" not in capsys.readouterr().out
    assert load_checkpoint(str(out / "transformer_cache.pt"), "cache")["tokens"].max() < 16
    pipe = pipeline.load_pipeline(str(bundle_path), verbose=False)
    assert pipe.transformer.cfg.n_codes == pipe.vq.cfg.n_codes == 16


@pytest.mark.parametrize("older_run", [False, True])
def test_a_new_vqgan_is_not_bundled_with_the_transformer_of_the_old_one(toy_run, tmp_path, capsys, older_run):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    if older_run:                                          # a transformer.pt written before the hash was stored
        ckpt = load_checkpoint(str(out / "transformer.pt"), "transformer")
        ckpt.pop("vqgan_hash", None)
        save_checkpoint(ckpt, str(out / "transformer.pt"))
    else:
        assert "vqgan_hash" in load_checkpoint(str(out / "transformer.pt"), "transformer")
    bundle_path = tmp_path / "model.pt"
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--seed", "1", "--out", str(out),
                                       "--bundle", str(bundle_path)], ["transformer.pt", "--stage transformer"])
    assert not bundle_path.exists()


def test_sample_refuses_a_bundle_whose_transformer_does_not_fit_its_vqgan(bundle, capsys, tmp_path):
    """A bundle put together by hand (or by an older train.py) from stages of two runs."""
    b = load_checkpoint(bundle, "bundle")
    small = config_from_dict(vqgan.Config, dict(b["vqgan"]["config"], n_codes=8))
    b["vqgan"] = vqgan.Trainer(small).checkpoint()                             # 8 codes; the transformer draws 32
    save_checkpoint(b, str(tmp_path / "mixed.pt"))
    refused(capsys, sample.main, ["rain on a roof", "--ckpt", str(tmp_path / "mixed.pt"), "--steps", "2",
                                  "--out", str(tmp_path / "out")], ["mixed.pt"], tmp_path / "out")


def test_sample_refuses_a_bundle_whose_transformer_learnt_another_vqgan(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["transformer"]["vqgan_hash"] = "0" * 16
    save_checkpoint(b, str(tmp_path / "mixed.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "mixed.pt"), tmp_path / "o")],
            ["mixed.pt", "another VQGAN"], tmp_path / "o")
    b["transformer"]["vqgan_hash"] = runtime.vqgan_hash(b["vqgan"])
    save_checkpoint(b, str(tmp_path / "matched.pt"))
    assert sample.main(["rain on a roof", *sample_args(str(tmp_path / "matched.pt"), tmp_path / "o")]) == 0


def test_a_bundle_is_never_made_worse_by_a_one_stage_run(toy_run, tmp_path, capsys):
    """An existing bundle's other stages are kept; a transformer that would not fit the new tokens is a
    refusal that leaves the bundle's bytes as they were; a file that is not a bundle is never overwritten."""
    bundle_path = tmp_path / "model.pt"
    shutil.copy(toy_run / "vqgan_only.pt", tmp_path / "vqgan_only.pt")
    # a complete bundle: the toy run's vqgan, clap and transformer
    full = tmp_path / "full_run"
    shutil.copytree(toy_run, full)
    assert train.main(TOY + ["--stage", "transformer", "--steps", "1", "--out", str(full), "--resume",
                             "--bundle", str(bundle_path)]) == 0
    assert sorted(s for s in train.STAGES if s in load_checkpoint(str(bundle_path), "bundle")) == ["clap", "transformer", "vqgan"]
    # a vocoder trained alone into a fresh folder joins the bundle; nothing is lost
    assert train.main(TOY + ["--stage", "vocoder", "--steps", "1", "--out", str(tmp_path / "voc"),
                             "--bundle", str(bundle_path)]) == 0
    merged = load_checkpoint(str(bundle_path), "bundle")
    assert all(s in merged for s in ("vqgan", "clap", "transformer"))
    pipeline.load_pipeline(str(bundle_path), verbose=False)
    # a VQGAN retrained alone: the bundle's transformer learnt other tokens, so no bundle, and its bytes stay
    before = bundle_path.read_bytes()
    refused(capsys, train.main, TOY + ["--stage", "vqgan", "--steps", "1", "--out", str(tmp_path / "vq"),
                                       "--bundle", str(bundle_path)], ["transformer", "vqgan", "new path"])
    assert bundle_path.read_bytes() == before
    # a file that is not one of our bundles is refused before any training
    (tmp_path / "essay.txt").write_text("my essay")
    refused(capsys, train.main, CLAP_RUN + ["--steps", "1", "--out", str(tmp_path / "c"),
                                            "--bundle", str(tmp_path / "essay.txt")], ["essay.txt"], tmp_path / "c")
    assert (tmp_path / "essay.txt").read_text() == "my essay"


# ---------------------------------------------------------------------------------------------------
# Files that are not what they claim: weights, configs, entries, the file itself
# ---------------------------------------------------------------------------------------------------

def _weights(b, how):
    w = b["transformer"]["model"]
    name = "head.weight"
    if how == "complex":
        w[name] = torch.complex(w[name], torch.full_like(w[name], float("nan")))
    elif how == "int64":
        w[name] = torch.ones_like(w[name], dtype=torch.int64)
    elif how == "float64 beyond float32":
        w[name] = torch.full_like(w[name], 1e300, dtype=torch.float64)
    elif how == "stride 0":
        w[name] = torch.zeros(1).expand(10 ** 12)
    return name


@pytest.mark.parametrize("how, words", [("complex", ["complex"]), ("int64", ["int64", "float"]),
                                        ("float64 beyond float32", ["float32"]), ("stride 0", ["stores"])])
def test_weights_that_are_not_finite_float32_are_refused(bundle, tmp_path, capsys, how, words):
    b = load_checkpoint(bundle, "bundle")
    name = _weights(b, how)
    path = tmp_path / "damaged.pt"
    save_checkpoint(b, str(path))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(path), tmp_path / "o")],
            ["damaged.pt", name, *words], tmp_path / "o")


def test_a_checkpoint_with_compressed_entries_is_refused_before_it_is_inflated(tmp_path):
    import zipfile
    save_checkpoint({"stage": "x", "t": torch.zeros(1000)}, str(tmp_path / "plain.pt"))
    with zipfile.ZipFile(tmp_path / "plain.pt") as zin, \
            zipfile.ZipFile(tmp_path / "zipped.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert torch.load(tmp_path / "zipped.pt", weights_only=True)["t"].shape == (1000,)   # torch would inflate it
    with pytest.raises(UserError, match="compressed"):
        load_checkpoint(str(tmp_path / "zipped.pt"))


def test_a_layer_count_beyond_any_model_is_refused_before_building(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["transformer"]["config"]["n_layers"] = 4096
    save_checkpoint(b, str(tmp_path / "deep.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "deep.pt"), tmp_path / "o")],
            ["n_layers", "4096"], tmp_path / "o")


# Bundles that load but hold nonsense: one sentence naming the file and the entry, before any model is built.
def _damage(b, how):
    if how == "no config":
        del b["vqgan"]["config"]
    elif how == "no weights":
        del b["transformer"]["model"]
    elif how == "a list for a stage":
        b["clap"] = [1, 2, 3]
    elif how == "a list for a config":
        b["vqgan"]["config"] = [1, 2]
    elif how == "a string for a weight":
        b["transformer"]["model"]["head.weight"] = "weights"
    elif how == "a string for a number":
        b["transformer"]["config"]["n_layers"] = "two"
    elif how == "a negative layer count":
        b["transformer"]["config"]["n_layers"] = -1
    elif how == "a terabyte width":
        b["transformer"]["config"]["width"] = 2 ** 40
    elif how == "NaN weights":
        b["vqgan"]["model"]["quantizer.codebook.weight"][0, 0] = float("nan")
    elif how == "a NaN in a config":
        b["vqgan"]["config"]["beta"] = float("nan")


@pytest.mark.parametrize("how, words", [
    ("no config", ["vqgan.config", "missing"]),
    ("no weights", ["transformer.model", "missing"]),
    ("a list for a stage", ["'clap'", "list"]),
    ("a list for a config", ["vqgan.config", "list"]),
    ("a string for a weight", ["transformer.model.head.weight", "str"]),
    ("a string for a number", ["n_layers", "'two'"]),
    ("a negative layer count", ["n_layers", "-1"]),
    ("a terabyte width", ["width", str(2 ** 40)]),
    ("NaN weights", ["vqgan.model.quantizer.codebook.weight", "NaN"]),
    ("a NaN in a config", ["vqgan.config.beta", "nan"]),
])
def test_a_bundle_holding_nonsense_is_one_sentence_naming_the_file_and_entry(bundle, tmp_path, capsys, how, words):
    b = load_checkpoint(bundle, "bundle")
    _damage(b, how)
    path = tmp_path / "damaged.pt"
    save_checkpoint(b, str(path))
    err = refused(capsys, sample.main, ["rain on a roof", "--ckpt", str(path), "--steps", "2",
                                        "--out", str(tmp_path / "out")], words, tmp_path / "out")
    if how != "a string for a number":                              # config_from_dict does not know the path
        assert "damaged.pt" in err


def test_a_weight_of_the_wrong_shape_is_one_sentence():
    from ground import runtime
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=r"'weight' is \(2, 4\), where its config needs \(2, 3\)"):
        runtime.load_weights(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "test checkpoint")
    with pytest.raises(UserError, match="lacks weight 'bias'"):
        runtime.load_weights(model, {"weight": torch.zeros(2, 3)}, "test checkpoint")


def test_a_vocabulary_of_numbers_is_named(bundle, tmp_path, capsys):
    b = load_checkpoint(bundle, "bundle")
    b["clap"]["vocab"] = list(range(len(b["clap"]["vocab"])))
    save_checkpoint(b, str(tmp_path / "numbers.pt"))
    refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "numbers.pt"), tmp_path / "o")],
            ["numbers.pt", "vocab"], tmp_path / "o")


def test_a_fifo_as_checkpoint_is_called_what_it_is(bundle, tmp_path, capsys, alarm):
    os.mkfifo(tmp_path / "model.pt")
    alarm(20)
    err = refused(capsys, sample.main, ["rain on a roof", *sample_args(str(tmp_path / "model.pt"), tmp_path / "o")],
                  ["model.pt", "not a regular file"])
    assert "does not exist" not in err


def test_a_damaged_official_vocoder_is_one_sentence_in_train_as_in_sample(tmp_path, capsys):
    path = tmp_path / "generator_v1"
    torch.save({"generator": {"conv_pre.bias": torch.zeros(3), "conv_pre.weight_g": torch.zeros(2)}}, path)
    refused(capsys, train.main, TOY + ["--steps", "1", "--out", str(tmp_path / "run"), "--vocoder-ckpt", str(path)],
            ["generator_v1"])


def test_weights_hash_is_sha256_over_every_weights_name_and_bytes_in_name_order():
    """The fingerprint a token cache and a transformer keep of their VQGAN: by hand, 16 hex digits of SHA-256
    over each name then its bytes, names sorted; the same bytes under another name are another checkpoint."""
    import hashlib
    weights = {"b.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "a.count": torch.tensor(7)}
    h = hashlib.sha256()
    for name in ("a.count", "b.weight"):
        h.update(name.encode())
        h.update(weights[name].numpy().tobytes())
    assert runtime.weights_hash({"model": weights}) == h.hexdigest()[:16]
    renamed = {"c.weight": weights["b.weight"], "a.count": weights["a.count"]}
    assert runtime.weights_hash({"model": renamed}) != runtime.weights_hash({"model": weights})
