"""
speed/fast.py — the inference speed-ups, kept out of the model files so that those read like the paper.

Paper: Sec. 1, Sec. 5.1 and Fig. 2 make speed the method's point (a 9.85 s clip in 16 steps, faster
than real time on 4 CPU cores). The model files hold the version a student should read; each section
here is one trick, with why it pays. speed/benchmark.py times every one of them against the plain path
(the measured figures are in RESULTS.md, not here). A student can skip this file entirely.

  int8 linears              quantize_int8: the transformer's nn.Linear layers with int8 weights (CPUs)
  CUDA graphs               GraphedTransformer: the 24 blocks replayed as one graph per batch shape
  the CPU's dtype           measure_cpu_dtype: fp32, bf16 or int8, chosen by timing them once here;
                            inference_dtype: sample.py's choice, which uses it for large models
  bf16 weights              hold_weights_in: converted once, not by autocast on every forward pass
  chunked vocoder           vocode_chunked: HiFiGAN over cache-sized chunks (CPUs; pipeline.py chooses it)
"""

import gc
import json
import os
import platform
import stat
import sys
import time
import warnings

import torch
import torch.nn as nn

from ground.runtime import DTYPES, SMALL_WIDTH, UserError, auto_dtype, native_dtype, write_atomically
import vocoder


# ---------------------------------------------------------------------------------------------------
# int8 linears.
# ---------------------------------------------------------------------------------------------------

def quantize_int8(model: nn.Module) -> nn.Module:
    """The transformer for fast inference on CPUs without native bf16: its nn.Linear layers (qkv, proj,
    MLP, head: >99 % of the arithmetic) with int8 weights, one scale per output row.

    "Dynamic" quantisation: each layer's input is rounded to int8 on the fly (one scale per call, from
    its min and max), multiplied by the int8 weight with int32 accumulation, and the result turned back
    into fp32. Integer multiply-adds (VNNI, or AVX2's 8-bit products) do about twice the work of fp32 ones
    per instruction, and the weights take a quarter of the memory traffic. The logits move by a few %
    and the judges score the demo's clips the same (RESULTS.md). The embeddings, LayerNorms,
    attention softmax and the small CLAP projection stay fp32. Inference only: the int8 weights have no
    gradients. Changes `model` in place and returns it (a copy would hold 170 M fp32 weights twice in
    memory); quantise a copy.deepcopy(model) to keep the fp32 one. A PyTorch without the (deprecated)
    quantisation API gets the model back unchanged, in fp32, with one line saying so.
    """
    if not int8_available():
        print("int8 unavailable: this PyTorch has no torch.ao.quantization; the transformer stays fp32")
        return model
    quantize_linears(model, {"blocks", "head"})
    gc.collect()                      # the replaced fp32 layers sit in reference cycles: free their 0.5 GB now
    return model


def int8_available() -> bool:
    """Whether this PyTorch still has the dynamic quantisation API (deprecated in favour of torchao)."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_linears(model: nn.Module, which: set) -> nn.Module:
    """PyTorch's dynamic int8 quantisation, per output channel, of the nn.Linear layers inside `which`
    (submodule names or module types), in place. The one place that calls the quantisation API."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():   # the API is deprecated in favour of torchao, and still works
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {w: per_channel_dynamic_qconfig for w in which}, inplace=True)
    return model


# ---------------------------------------------------------------------------------------------------
# CUDA graphs.
# ---------------------------------------------------------------------------------------------------

def trunk(model, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """The part of SpecMaskGIT.forward after embed: blocks, final norm, head. (B, n + 1, W) -> (B, n, K)."""
    for block in model.blocks:
        x = block(x, attn_mask)
    return model.head(model.norm(x[:, :-1]))                                    # the CLAP token has no logits


# How many eager passes a (shape, dtype) makes before its graph is captured, at the CAPTURE_AFTER + 1-th
# call. Capturing costs more than one pass (two warm-up passes on a side stream, then the recording), and
# a replay saves only the launch overhead of one pass, so a shape met once or twice loses by capture: the
# batch of B that specmaskgit.generate's first step runs (guidance 0, no conditional half) is such a shape,
# the sampler's 2B of every later step is not. The break-even count is measured by the GPU check, which
# times a capture against eager passes; GraphedTransformer.calls holds the calls of each shape.
CAPTURE_AFTER = 2


class GraphedTransformer(nn.Module):
    """SpecMaskGIT whose blocks run as a recorded CUDA graph: same inputs, same logits, fewer launches.

    Why: at batch 2 (one clip with CFG) a forward pass is some 300 small kernels (24 blocks of matrix
    products, norms, softmax and adds). The GPU finishes each in microseconds, but the CPU needs a few
    microseconds to launch each, so the GPU mostly waits for Python. A CUDA graph records the launches
    once, for fixed memory addresses, and replays all of them with a single call. So a (shape, dtype)
    runs eagerly for its first capture_after calls (see CAPTURE_AFTER); the next copies the input into a
    static buffer and records; later calls copy into that buffer, replay, and copy the output out. The
    embedding stays eager (it is cheap and its inputs vary). MAGNeT's restricted context (an attn_mask,
    magnet.context_mask) is one more static input: copied in before every replay, so the graph follows
    whatever mask it is given, and a graph of each kind (with, without) is kept apart.
    Eager fallback, with the same logits: on a CPU, with autograd on, or if capture fails.
    """

    def __init__(self, model, capture_after: int = CAPTURE_AFTER):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.capture_after = capture_after
        self.graphs = {}      # key -> (static input, static attn_mask or None, graph, static output)
        self.calls = {}       # key -> forward passes with it so far; key = (shape, dtype, autocast dtype, mask shape)
        self.capture_failed = False

    def uses_graph(self, x) -> bool:
        return x.is_cuda and not torch.is_grad_enabled() and not self.capture_failed

    def should_capture(self, key) -> bool:
        """The capture rule: a key is recorded at its capture_after + 1-th call (self.calls counts them)."""
        return self.calls.get(key, 0) > self.capture_after

    def forward(self, tokens, cond, mask, drop_cond=None, attn_mask=None):
        x = self.model.embed(tokens, cond, mask, drop_cond)                     # (B, n + 1, W)
        if not self.uses_graph(x):
            return trunk(self.model, x, attn_mask)                              # eager
        amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        key = (tuple(x.shape), x.dtype, amp, None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.dtype))
        self.calls[key] = self.calls.get(key, 0) + 1
        if key not in self.graphs and not self.should_capture(key):
            return trunk(self.model, x, attn_mask)                              # eager until the shape recurs
        try:
            if key not in self.graphs:
                # The static inputs are made outside inference mode: one made under torch.inference_mode
                # would be an inference tensor, which a later call under plain no_grad may not write into.
                with torch.inference_mode(False):
                    static_in = x.clone()
                    static_mask = None if attn_mask is None else attn_mask.clone()
                self.graphs[key] = (static_in, static_mask, *self.capture(static_in, static_mask, amp))
            static_in, static_mask, graph, static_out = self.graphs[key]
            static_in.copy_(x)
            if static_mask is not None:
                static_mask.copy_(attn_mask)
            graph.replay()
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"warning: CUDA graph capture failed, the transformer runs eagerly from now on ({first})",
                  file=sys.stderr, flush=True)
            self.capture_failed, self.graphs = True, {}
            return trunk(self.model, x, attn_mask)
        return static_out.clone()                          # the next replay overwrites static_out

    def capture(self, static_in, static_mask, amp):
        """Record the trunk on `static_in` (and `static_mask`, None or an attn_mask): returns (graph, static output)."""
        side = torch.cuda.Stream()                         # warm up on a side stream, as PyTorch's docs advise:
        side.wait_stream(torch.cuda.current_stream())      # kernels are chosen and workspaces allocated
        with torch.cuda.stream(side):                      # before recording, not inside the graph
            for _ in range(2):
                trunk(self.model, static_in, static_mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # autocast's cache of cast weights would hold tensors from outside the graph: record without it
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None, cache_enabled=False), \
                torch.cuda.graph(graph):
            static_out = trunk(self.model, static_in, static_mask)
        return graph, static_out


# ---------------------------------------------------------------------------------------------------
# The CPU's dtype, chosen by measuring. Which of fp32, bf16 and int8 runs fastest depends on the CPU's
# instructions (AVX2, AVX-512 BF16, VNNI, AMX) and on PyTorch's kernels for them, which change between
# versions; reading CPU flags guesses, timing the layer shape the model uses knows. Measured once per
# CPU model, torch version, width and thread count, then read from a small cache file.
# ---------------------------------------------------------------------------------------------------

def default_cache_path() -> str | None:
    """$XDG_CACHE_HOME/specmaskgit/cpu_dtype.json, else ~/.cache/...; None (no cache) when neither names an
    absolute folder: an empty HOME would otherwise put the cache at the filesystem's root, /.cache."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):                          # the XDG spec: a relative path is to be ignored
        home = os.environ.get("HOME", "") if "HOME" in os.environ else os.path.expanduser("~")
        base = os.path.join(home, ".cache") if os.path.isabs(home) and home.rstrip("/") else ""
    return os.path.join(base, "specmaskgit", "cpu_dtype.json") if base else None


CACHE = default_cache_path()
CANDIDATES = ("fp32", "bf16", "int8")
MAX_CACHE_BYTES = 64 * 1024        # a few hundred entries; anything larger is not our file


def read_cache(cache: str | None) -> dict:
    """The cache's table, or {} for anything that is not a small regular file holding a JSON object: it is
    opened without blocking (a FIFO there would wait forever), at most MAX_CACHE_BYTES are read (a link
    to /dev/zero never ends), and JSON nested too deeply for the parser counts as damaged."""
    if cache is None:
        return {}
    try:
        fd = os.open(cache, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        text = os.read(fd, MAX_CACHE_BYTES + 1)
        table = json.loads(text) if len(text) <= MAX_CACHE_BYTES else {}
    except (OSError, ValueError, RecursionError):
        return {}
    finally:
        os.close(fd)
    return table if isinstance(table, dict) else {}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CFG_ROWS = 2 * 5 * 53     # the rows a full-size clip's CFG batch feeds each transformer linear: 2 x 265 tokens


def candidate_layer(name: str, width: int) -> tuple:
    """(layer, input dtype) of a (width, 4 width) linear layer as the pipeline runs `name`: fp32; bf16
    weights converted once (hold_weights_in) fed a bf16 input, no autocast; int8 weights fed fp32."""
    torch.manual_seed(0)
    layer = nn.Linear(width, 4 * width).eval()
    if name == "int8":
        return quantize_linears(nn.Sequential(layer), {nn.Linear}), torch.float32
    if name == "bf16":
        return layer.to(torch.bfloat16), torch.bfloat16
    return layer, torch.float32


def rate(layer, x: torch.Tensor, calls: int) -> float:
    """GFLOP/s of `calls` calls of a (width, 4 width) linear `layer` on `x` (rows, width), after one warm-up."""
    rows, width = x.shape
    layer(x)                                                                    # warm-up: packing, kernel choice
    start = time.perf_counter()
    for _ in range(calls):
        layer(x)
    return 2 * rows * width * 4 * width * calls / (time.perf_counter() - start) / 1e9


def time_candidate(name: str, width: int, rows: int = CFG_ROWS) -> float:
    """GFLOP/s of a product shaped like the transformer's MLP, (rows, width) @ (width, 4 width), in `name`,
    timed the way the pipeline runs it: the weights already in the candidate's dtype (so no call pays for
    converting them, as autocast would), at the transformer's real row count.

    A dtype this CPU only emulates (bf16 without native support runs many times slower) would take
    seconds, so each candidate first runs a 32-row product; one more than 4x slower than fp32 there
    is given that small product's rate and not timed further.
    """
    layer, dtype = candidate_layer(name, width)
    with torch.inference_mode():
        if name != "fp32":                                          # fp32 is the yardstick, never cut short
            plain, _ = candidate_layer("fp32", width)
            small = rate(layer, torch.randn(32, width).to(dtype), 1)
            if small < rate(plain, torch.randn(32, width), 1) / 4:
                return small
        return rate(layer, torch.randn(rows, width).to(dtype), 2)


def hold_weights_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` with its weights converted once to bf16 when `dtype` is bf16 (in place; returned), else as is.

    Autocast leaves fp32 weights in fp32 and casts each one to bf16 inside every forward pass that uses
    it: for the 170 M transformer about 1 GB of memory traffic per pass (read fp32, write and read bf16)
    where weights held in bf16 need 0.34 GB. That matters most at batch 1-2, the real-time case, where
    reading the weights is most of the pass. The models accept bf16 weights (their inputs are cast to
    the weight's dtype where they enter); what is numerically sensitive stays fp32: the sampler's
    softmax and Gumbel noise, the VQGAN and its codebook search, CLAP.
    """
    return model.to(torch.bfloat16) if dtype == torch.bfloat16 else model


def measure_cpu_dtype(width: int, timer=time_candidate, cache=CACHE, verbose=True) -> str:
    """The fastest of fp32 / bf16 / int8 for a transformer of this width on this CPU: "fp32" | "bf16" | "int8".

    Timed once with `timer(name, width) -> GFLOP/s` and cached in `cache` (JSON, written atomically; a
    corrupt file is ignored and rewritten). Prints the choice and the figures.
    """
    candidates = CANDIDATES if int8_available() else tuple(c for c in CANDIDATES if c != "int8")
    if verbose and "int8" not in candidates:
        print("int8 unavailable: this PyTorch has no torch.ao.quantization; choosing between fp32 and bf16")
    key = (f"{cpu_name()} | torch {torch.__version__} | width {width} | {torch.get_num_threads()} threads | "
           f"{CFG_ROWS} rows, weights in the candidate's dtype")
    table = read_cache(cache)
    try:
        rates = {k: float(v) for k, v in table[key].items()}
        where = "cached in " + cache
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        table, where = None, "measured now"
        rates = {}
        for name in candidates:
            try:
                rates[name] = timer(name, width)
            except (RuntimeError, NotImplementedError):                 # e.g. no int8 engine in this build
                rates[name] = 0.0
    choice = max(candidates, key=lambda name: rates.get(name, 0.0))
    if table is None and cache is not None:
        save_cache(cache, key, rates)
    elif cache is None and verbose:
        print("CPU dtype: not cached (neither HOME nor XDG_CACHE_HOME names a folder); measured again next time")
    if verbose:
        shown = ", ".join(f"{name} {rates.get(name, 0.0):.0f}" for name in CANDIDATES)
        print(f"CPU dtype by measurement ({where}): {choice}; GFLOP/s on a {width} x {4 * width} layer: {shown}")
    return choice


def inference_dtype(device: str, name: str | None, width: int, verbose: bool = True) -> torch.dtype:
    """sample.py's choice for a transformer of this `width`; may be torch.qint8 (fast.quantize_int8).

    `name` ("fp32", "bf16", "fp16", "int8") overrides. "auto" (or None) picks what pays on this machine:
    - a small model (width < 512, the toy demo): fp32 on every device; its matrices are too small for
      bf16 or int8 to win back their conversions, and a GPU then gives the CPU's output;
    - CUDA: bf16 from compute capability 8.0 (tensor cores that run it natively), fp32 on older cards;
    - a larger model on a CPU: the fastest of fp32, bf16 and int8 (int8 weights for the transformer's
      linear layers, fp32 elsewhere), timed once on this CPU and cached (measure_cpu_dtype).
    """
    if name not in (None, "auto", "int8", *DTYPES):
        raise UserError(f"--dtype must be one of auto, {', '.join(DTYPES)}, int8, not {name!r}.")
    cuda = torch.device(device).type == "cuda"                    # "cuda:1" too (a torchrun process)
    if name == "int8":
        dtype, why = torch.qint8, "asked for with --dtype"
    elif name not in (None, "auto"):
        return native_dtype(device, name, verbose)
    elif cuda or width < SMALL_WIDTH:
        dtype, why = auto_dtype(device, small=width < SMALL_WIDTH)
    else:
        dtype = {"int8": torch.qint8, **DTYPES}[measure_cpu_dtype(width, verbose=verbose)]
        why = "the fastest on this CPU, measured"
    if cuda and dtype == torch.qint8:
        raise UserError("--dtype int8 is for CPUs (PyTorch's dynamic quantisation has no CUDA kernels); use bf16.")
    if verbose:
        shown = "int8 (transformer linears; fp32 elsewhere)" if dtype == torch.qint8 else str(dtype).replace("torch.", "")
        print(f"compute dtype: {shown} on {device} ({why})")
    return dtype


def save_cache(cache: str, key: str, rates: dict) -> None:
    """Add `key` to the JSON file `cache`, written atomically (runtime.write_atomically). Only a regular file
    (or nothing) there is replaced: a link, a pipe or a folder at that path is left as it is."""
    try:
        if not stat.S_ISREG(os.lstat(cache).st_mode):
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    table = read_cache(cache)
    table[key] = rates
    try:
        write_atomically(cache, lambda f: f.write(json.dumps(table, indent=1).encode()))
    except UserError:                                     # no cache: measured again next time, nothing lost
        pass


# ---------------------------------------------------------------------------------------------------
# Chunked vocoder.
# ---------------------------------------------------------------------------------------------------
#
# A 9.8 s clip makes activations of 7-27 MB per tensor (e.g. 128 channels x 54272 samples), far more
# than a core's 1 MB of L2 cache, so every leaky ReLU, addition and narrow convolution of HiFiGAN waits
# on main memory. The generator is convolutional: output sample n depends only on input frames near
# n / 256. So we cut the mel into chunks of `chunk` frames, give each some context on both sides, and
# run all the layers on one chunk while its activations still sit in cache. After every upsampling
# level we crop away the context that the rest of the network no longer needs (the margins), so the
# expensive later levels recompute almost nothing. Values near a chunk's cut are wrong (the
# convolutions zero-pad there), but the margins are exactly wide enough that none of them reach the
# part we keep; at the clip's real edges the zero padding is the full forward's own, so the result
# equals vocoder.Generator.forward up to float rounding. Chunking multiplies the number of (small) ops
# ~7x and every op ends in an OpenMP barrier: on a CPU shared with other processes, one thread
# (torch.set_num_threads(1)) or the plain vocoder.vocode can be faster.

def vocoder_margins(generator) -> list:
    """Context (in samples of each level) that must survive after each level for exact outputs.

    Returns [m_in (frames, for the input), m_0, ..., m_last] where m_i is measured at the output of
    upsampling level i. Computed backwards from the output: a stride-1 conv of kernel k and dilation d
    reaches d (k - 1) / 2 samples each way; a residual block reaches the sum over its convs; the MRF as
    far as its widest block; a transposed conv of kernel k and stride u reaches k / (2u) input samples
    (we allow one more for the rounding of its alignment).
    """
    cfg = generator.cfg
    def reach(kr, dr):                                                      # one residual block's reach
        pairs = [(kr, d) for d in dr] + ([(kr, 1)] * len(dr) if cfg.resblock == "1" else [])
        return sum(d * (k - 1) // 2 for k, d in pairs)
    mrf = max(reach(kr, dr) for kr, dr in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
    m = [3]                                                                 # conv_post: kernel 7
    for u, k in reversed(list(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))):
        m.insert(0, -(-(m[0] + mrf) // u) + -(-k // (2 * u)) + 1)         # ceil((m + mrf) / u) + ceil(k / 2u) + 1
    m[0] += 3                                                               # conv_pre: kernel 7
    return m


def vocoder_forward_chunked(generator, log_mel: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """generator(log_mel) computed `chunk` frames at a time (see above): (B, 80, F) -> (B, 1, 256 F)."""
    frames = log_mel.shape[-1]
    m_in, *m_level = vocoder_margins(generator)
    rates, r = [], 1
    for u in generator.cfg.upsample_rates:
        r *= u
        rates.append(r)                                                     # samples per frame after each level
    out = []
    for s in range(0, frames, chunk):
        e = min(s + chunk, frames)
        lo = max(0, s - m_in)
        x = generator.conv_pre(log_mel[..., lo:min(frames, e + m_in)])      # (B, h_u, chunk + context)
        offset = lo                                                         # global index of x[..., 0]
        for i, rate in enumerate(rates):
            x = generator.upsample_level(i, x)
            offset *= generator.cfg.upsample_rates[i]
            a, b = max(0, s * rate - m_level[i]), min(frames * rate, e * rate + m_level[i])
            x = x[..., a - offset:b - offset]                               # drop the context no longer needed
            offset = a
        out.append(generator.post(x)[..., s * rates[-1] - offset:e * rates[-1] - offset])
    return torch.cat(out, dim=-1)                                           # (B, 1, 256 F)


def vocode_chunked(generator, log_mel: torch.Tensor, dtype: torch.dtype = torch.float32, chunk: int = 128) -> torch.Tensor:
    """vocoder.vocode with the generator run `chunk` frames at a time (vocoder_forward_chunked): log-mel
    (80, F) or (B, 80, F) -> waveform (256 F,) or (B, 256 F), fp32, the same up to float rounding."""
    return vocoder.vocode(generator, log_mel, dtype, forward=lambda x: vocoder_forward_chunked(generator, x, chunk))
