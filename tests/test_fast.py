"""fast.py: every speed-up computes what the plain path computes; the CPU dtype choice is measured once
and cached. Speed itself is not asserted (benchmark.py prints it)."""

import json

import torch

import fast
import specmaskgit


def small_model(seed=0):
    torch.manual_seed(seed)
    cfg = specmaskgit.Config(n_layers=2, width=64, n_heads=4, mlp=128, n_codes=32, rows=5, cols=8, cond_dim=16)
    return specmaskgit.SpecMaskGIT(cfg).eval()


def test_graphed_transformer_falls_back_to_the_same_logits_and_tokens_on_a_cpu():
    model = small_model()
    graphed = fast.GraphedTransformer(model)
    tokens, cond = torch.randint(0, 32, (3, 5, 8)), torch.randn(3, 16)
    mask = torch.rand(3, 5, 8) < 0.5
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        for c, d in ((cond, None), (None, None), (cond, drop)):
            assert torch.equal(graphed(tokens, c, mask, d), model(tokens, c, mask, d))
    assert graphed.graphs == {}                                       # nothing was captured on the CPU
    assert torch.equal(specmaskgit.generate(graphed, cond, steps=4, seed=2), specmaskgit.generate(model, cond, steps=4, seed=2))


def test_using_guide_swaps_eq2_for_the_plain_variant_and_restores_it():
    model = small_model()
    cond = torch.randn(2, 16)
    calls = []

    def plain(*args):
        calls.append(args[-1])
        return fast.guided_logits_separate(*args)
    with fast.using_guide(plain):
        a = specmaskgit.generate(model, cond, steps=4, seed=1)
    assert calls == [3.0 * s / 3 for s in range(4)]                   # every step went through it, with t of Eq. 2
    assert specmaskgit.guided_logits is not plain                    # restored
    assert torch.equal(a, specmaskgit.generate(model, cond, steps=4, seed=1))   # and it computes the same thing
    try:
        with fast.using_guide(plain):
            raise KeyError
    except KeyError:
        pass
    assert specmaskgit.guided_logits is not plain                    # restored after an error too


def test_host_sampler_commits_the_same_tokens_when_the_logits_leave_no_choice():
    model = small_model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(32.0) * 100)               # code 31 certain everywhere
    cond = torch.randn(2, 16)
    host = fast.generate_on_host(model, cond, steps=5)
    assert torch.equal(host, specmaskgit.generate(model, cond, steps=5)) and (host == 31).all()


def fake_timer(rates):
    calls = []

    def timer(name, width):
        calls.append((name, width))
        return rates[name]
    return timer, calls


def test_cpu_dtype_is_the_fastest_measured_and_is_cached(tmp_path, capsys):
    cache = str(tmp_path / "sub" / "cpu_dtype.json")
    timer, calls = fake_timer({"fp32": 80.0, "bf16": 0.3, "int8": 130.0})
    assert fast.measure_cpu_dtype(768, timer=timer, cache=cache) == "int8"
    assert sorted(calls) == [("bf16", 768), ("fp32", 768), ("int8", 768)]
    out = capsys.readouterr().out
    assert "int8" in out and "fp32 80" in out and "int8 130" in out  # the choice and the figures are printed
    assert fast.measure_cpu_dtype(768, timer=timer, cache=cache) == "int8"
    assert len(calls) == 3                                            # the second time from the cache
    assert "cached" in capsys.readouterr().out
    timer2, calls2 = fake_timer({"fp32": 80.0, "bf16": 200.0, "int8": 130.0})
    assert fast.measure_cpu_dtype(1024, timer=timer2, cache=cache) == "bf16"   # another width: measured again
    table = json.load(open(cache))
    assert len(table) == 2 and not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".tmp")]


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    cache = tmp_path / "cpu_dtype.json"
    cache.write_text("{not json")
    timer, calls = fake_timer({"fp32": 80.0, "bf16": 0.3, "int8": 10.0})
    assert fast.measure_cpu_dtype(768, timer=timer, cache=str(cache), verbose=False) == "fp32"
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 1
    cache.write_text(json.dumps({next(iter(json.loads(cache.read_text()))): "garbage"}))   # right key, bad value
    assert fast.measure_cpu_dtype(768, timer=timer, cache=str(cache), verbose=False) == "fp32"
    assert len(calls) == 6


def test_a_candidate_that_fails_is_never_chosen(tmp_path):
    def timer(name, width):
        if name == "int8":
            raise RuntimeError("no quantized engine")
        return {"fp32": 50.0, "bf16": 20.0}[name]
    assert fast.measure_cpu_dtype(768, timer=timer, cache=str(tmp_path / "c.json"), verbose=False) == "fp32"


def test_the_real_timer_gives_a_positive_rate_for_each_candidate():
    for name in fast.CANDIDATES:
        assert fast.time_candidate(name, 64) > 0
