"""speed/fast.py: every speed-up computes what the plain path computes; the CPU dtype choice is measured once
and cached. Speed itself is not asserted (speed/benchmark.py prints it)."""

import json

import torch

from speed import fast
import specmaskgit
from conftest import small_model


def test_graphed_transformer_falls_back_to_the_same_logits_and_tokens_on_a_cpu():
    model = small_model()
    graphed = fast.GraphedTransformer(model)
    tokens, cond = torch.randint(0, 32, (3, 5, 8)), torch.randn(3, 16)
    mask = torch.rand(3, 5, 8) < 0.5
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        for c, d in ((cond, None), (None, None), (cond, drop)):
            assert torch.equal(graphed(tokens, c, mask, d), model(tokens, c, mask, d))
    assert graphed.graphs == {} and graphed.calls == {}               # nothing counted or captured on the CPU
    assert torch.equal(specmaskgit.generate(graphed, cond, steps=4, seed=2), specmaskgit.generate(model, cond, steps=4, seed=2))


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


def test_the_timer_runs_each_candidate_with_weights_already_in_its_dtype_at_the_real_row_count(monkeypatch):
    seen = []
    real = fast.rate

    def spy(layer, x, calls):
        linear = layer[0] if isinstance(layer, torch.nn.Sequential) else layer
        weight = getattr(linear, "weight", None)
        weight = weight() if callable(weight) else weight                      # a quantised linear's weight()
        seen.append((weight.dtype, x.dtype, x.shape[0], torch.is_autocast_enabled("cpu")))
        return real(layer, x, calls)
    monkeypatch.setattr(fast, "rate", spy)
    monkeypatch.setattr(fast, "CFG_ROWS", 40)                                   # small here; 2 x 265 in the pipeline
    fast.time_candidate("bf16", 32, rows=fast.CFG_ROWS)
    assert seen[0][:2] == (torch.bfloat16, torch.bfloat16)                      # cast once, before timing
    assert all(not autocast for *_, autocast in seen)                           # no re-cast inside the calls
    assert seen[-1][2] in (32, 40)
    seen.clear()
    assert fast.time_candidate("fp32", 32, rows=40) > 0
    assert seen == [(torch.float32, torch.float32, 40, False)]                  # the yardstick: timed at full size only
    assert fast.time_candidate.__defaults__ == (2 * 265,)                      # one full-size clip with CFG


def test_bf16_is_held_in_the_weights_and_gives_logits_close_to_fp32():
    model = small_model()
    tokens, cond = torch.randint(0, 32, (2, 5, 8)), torch.randn(2, 16)
    mask = torch.rand(2, 5, 8) < 0.5
    with torch.no_grad():
        reference = model(tokens, cond, mask)
    held = fast.hold_weights_in(small_model(), torch.bfloat16)
    linears = [m for m in held.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    with torch.no_grad():
        out = held(tokens, cond, mask)                                          # no autocast needed
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_amp = held(tokens, cond, mask)                                  # nor harmful
    for o in (out, out_amp):
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o.float(), reference, atol=0.05, rtol=0.05)
    assert fast.hold_weights_in(model, torch.float32) is model and next(model.parameters()).dtype == torch.float32


class FakeGraph:
    """What fast.GraphedTransformer.capture returns, on a CPU: replay runs the trunk on the static input."""

    def __init__(self, model, static_in, static_mask):
        self.model, self.static_in, self.static_mask = model, static_in, static_mask
        self.static_out = fast.trunk(model, static_in, static_mask)
        self.replays = 0

    def replay(self):                                     # a real replay writes the memory, whatever the mode
        with torch.inference_mode():
            self.static_out.copy_(fast.trunk(self.model, self.static_in, self.static_mask))
        self.replays += 1


def graphed_on_cpu(monkeypatch, fail=False, capture_after=0):
    """A GraphedTransformer on the CPU that captures FakeGraphs; capture_after=0 records at the first call."""
    model = small_model()
    graphed = fast.GraphedTransformer(model, capture_after=capture_after)
    monkeypatch.setattr(graphed, "uses_graph", lambda x: not torch.is_grad_enabled() and not graphed.capture_failed)

    def capture(static_in, static_mask, amp):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        g = FakeGraph(model, static_in, static_mask)
        return g, g.static_out
    monkeypatch.setattr(graphed, "capture", capture)
    return model, graphed


def test_a_graph_captured_under_inference_mode_replays_under_no_grad(monkeypatch):
    model, graphed = graphed_on_cpu(monkeypatch)
    tokens, cond, mask = torch.randint(0, 32, (2, 5, 8)), torch.randn(2, 16), torch.rand(2, 5, 8) < 0.5
    with torch.no_grad():
        expected = model(tokens, cond, mask)
    with torch.inference_mode():
        first = graphed(tokens, cond, mask)                                     # captured here
    with torch.no_grad():
        second = graphed(tokens, cond, mask)                                    # the same graph, other mode
    with torch.inference_mode():
        third = graphed(tokens, cond, mask)
    assert len(graphed.graphs) == 1 and not graphed.capture_failed
    for out in (first, second, third):
        torch.testing.assert_close(out, expected)


def test_a_failed_capture_says_so_once_on_stderr_and_runs_eagerly(monkeypatch, capsys):
    model, graphed = graphed_on_cpu(monkeypatch, fail=True)
    tokens, cond, mask = torch.randint(0, 32, (2, 5, 8)), torch.randn(2, 16), torch.rand(2, 5, 8) < 0.5
    with torch.inference_mode():
        expected = model(tokens, cond, mask)
        outs = [graphed(tokens, cond, mask) for _ in range(3)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA graph capture failed" in err[0] and "eagerly" in err[0]
    assert graphed.capture_failed and graphed.graphs == {}
    for out in outs:
        assert torch.equal(out, expected)


def test_the_wrapper_takes_magnets_attention_mask_eagerly_and_in_a_graph(monkeypatch):
    import magnet
    model, graphed = graphed_on_cpu(monkeypatch)
    tokens, cond, mask = torch.randint(0, 32, (2, 5, 8)), torch.randn(2, 16), torch.rand(2, 5, 8) < 0.5
    drop = torch.tensor([False, True])
    with torch.no_grad():
        eager = fast.GraphedTransformer(model)                                 # the CPU's path: never a graph
        for k in (1, 3, 1):                                                    # one graph, its mask copied in
            context = magnet.context_mask(5, 8, k)
            expected = model(tokens, cond, mask, drop, attn_mask=context)
            assert torch.equal(eager(tokens, cond, mask, drop, attn_mask=context), expected)
            torch.testing.assert_close(graphed(tokens, cond, mask, drop, attn_mask=context), expected)
        torch.testing.assert_close(graphed(tokens, cond, mask, drop), model(tokens, cond, mask, drop))
    assert eager.graphs == {} and len(graphed.graphs) == 2                     # with and without a mask, apart
    rows = (2, 1, 1, 1, 1)                                                     # rows above the first: restricted
    assert torch.equal(magnet.generate(eager, cond, row_steps=rows, span_len=2, context=1, seed=0),
                       magnet.generate(model, cond, row_steps=rows, span_len=2, context=1, seed=0))


def test_a_shape_is_captured_at_its_call_after_capture_after_eager_ones(monkeypatch):
    assert isinstance(fast.CAPTURE_AFTER, int) and fast.CAPTURE_AFTER >= 1    # a shape met once stays eager
    model, graphed = graphed_on_cpu(monkeypatch, capture_after=fast.CAPTURE_AFTER)
    tokens, cond, mask = torch.randint(0, 32, (4, 5, 8)), torch.randn(4, 16), torch.rand(4, 5, 8) < 0.5
    with torch.no_grad():
        graphed(tokens[:2], None, mask[:2])                                    # specmaskgit's first step: B alone
        for call in range(1, fast.CAPTURE_AFTER + 4):
            out = graphed(tokens, cond, mask)                                  # every later step: 2B
            assert len(graphed.graphs) == (call > fast.CAPTURE_AFTER)          # captured at CAPTURE_AFTER + 1
            torch.testing.assert_close(out, model(tokens, cond, mask))
    (key_b, calls_b), (key_2b, calls_2b) = graphed.calls.items()
    assert (key_b[0][0], calls_b, key_2b[0][0], calls_2b) == (2, 1, 4, fast.CAPTURE_AFTER + 3)
    (graph_key, (*_, graph, _)), = graphed.graphs.items()
    assert graph_key == key_2b and graph.replays == 3                          # the capture's call replays too
