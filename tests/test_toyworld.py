"""data/toyworld.py: the toy sound world — reproducible clips, levels, every kind captioned by its own words."""

import re

import pytest
import torch

from data import toyworld
from ground.runtime import UserError

SR = 22050
SHORT = 8192          # 0.37 s: enough to check captions and levels quickly

# Words that name each kind, written here independently of data/toyworld.py's caption lists.
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
    assert toyworld.KINDS[:12] == list(KEYWORDS)
    assert len(toyworld.SYNTHS) == len(toyworld.KINDS)


def test_same_seed_and_index_give_the_same_clip():
    wav1, cap1, kinds1 = toyworld.toy_clip(3, 17, SHORT)
    toyworld.toy_clip(3, 18, SHORT)                       # other calls in between change nothing
    wav2, cap2, kinds2 = toyworld.toy_clip(3, 17, SHORT)
    assert torch.equal(wav1, wav2) and cap1 == cap2 and kinds1 == kinds2
    ds = toyworld.ToyDataset("val", n=30, num_samples=SHORT, seed=4)
    wav3, cap3, kinds3 = toyworld.toy_clip(ds.seed, 17, SHORT)           # a dataset item is its split's toy_clip
    assert torch.equal(ds[17]["wav"], wav3) and ds[17]["caption"] == cap3 and ds[17]["kind"] == kinds3[0]


def test_different_indices_seeds_and_splits_differ():
    a = toyworld.toy_clip(0, 5, SHORT)[0]
    assert not torch.allclose(a, toyworld.toy_clip(0, 6, SHORT)[0])
    assert not torch.allclose(a, toyworld.toy_clip(1, 5, SHORT)[0])
    splits = [toyworld.ToyDataset(s, n=10, num_samples=SHORT)[5]["wav"] for s in ("train", "val", "test")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(splits[i], splits[j])


def test_clips_are_float32_finite_and_peak_normalised():
    for n in (SHORT, toyworld.TOY_SAMPLES):
        for i in range(24 if n == SHORT else 12):
            wav, _, _ = toyworld.toy_clip(0, i, n)
            assert wav.dtype == torch.float32 and wav.shape == (n,)
            assert torch.isfinite(wav).all()
            peak = wav.abs().max().item()
            assert 0.5 - 1e-4 <= peak <= 0.9 + 1e-4
            assert wav.pow(2).mean().sqrt() > 0.01 * peak          # not a near-silent clip with one spike


def test_full_size_clip_length():
    wav, _, _ = toyworld.toy_clip(0, 0, 217088)
    assert wav.shape == (217088,) and torch.isfinite(wav).all()


def test_every_kind_appears_and_every_caption_names_its_kinds():
    seen, mixed = set(), 0
    for i in range(240):
        _, caption, kinds = toyworld.toy_clip(1, i, 2048)
        seen.update(kinds)
        mixed += len(kinds) == 2
        assert 1 <= len(kinds) <= 2 and len(set(kinds)) == len(kinds)
        said = words(caption)
        for k in kinds:
            assert said & KEYWORDS[toyworld.KINDS[k]], (caption, toyworld.KINDS[k])
        if len(kinds) == 1:                                          # and names nothing that is not there
            others = set().union(*(KEYWORDS[name] for j, name in enumerate(toyworld.KINDS[:12]) if j != kinds[0]))
            assert not said & others, caption
    assert seen == set(range(len(toyworld.KINDS)))
    assert 0.15 < mixed / 240 < 0.35                                # about a quarter mix two kinds


def test_captions_vary_for_one_kind():
    captions = {toyworld.toy_clip(2, 12 * i, 2048)[1] for i in range(40)}   # every 12th index: the same first kind
    assert len(captions) >= 5


def test_paraphrases_are_new_sentences_made_of_known_words():
    training = set()
    for options in toyworld.CAPTIONS.values():
        for phrases in options.values():
            training.update(phrases)
    training.update(toyworld.toy_clip(7, i, 2048)[1] for i in range(300))
    vocabulary = set().union(*(words(c) for c in training))
    for kind in toyworld.KINDS[:12]:
        assert len(toyworld.PARAPHRASES[kind]) >= 2
        for p in toyworld.PARAPHRASES[kind]:
            assert p not in training, p
            assert words(p) <= vocabulary, (p, words(p) - vocabulary)
            assert words(p) & KEYWORDS[kind], p


def test_toy_dataset_items():
    ds = toyworld.ToyDataset("train", n=13, num_samples=SHORT)
    assert len(ds) == 13
    item = ds[12]
    assert set(item) == {"wav", "caption", "kind", "id"}
    assert item["wav"].shape == (SHORT,) and isinstance(item["caption"], str) and item["caption"]
    assert isinstance(item["kind"], int) and 0 <= item["kind"] < len(toyworld.KINDS)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["wav"].shape == (4, SHORT) and batch["kind"].dtype == torch.long and len(batch["caption"]) == 4
    with pytest.raises(UserError):
        toyworld.ToyDataset("dev")
