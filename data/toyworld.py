"""
data/toyworld.py — a synthetic "toy sound world" with captions: a stand-in for AudioCaps that trains on a laptop.

Not the paper. SpecMaskGIT (ISMIR 2024, Sec. 4) trains its tokenizer and vocoder on AudioSet and its
text-to-audio model on AudioCaps: days to download and weeks of GPU time. So that every stage of the
pipeline can be trained and checked on a laptop, this file builds a tiny world of sounds from scratch:
12 kinds of sound a person recognises by ear (rain, a dog, birds, a siren, ...), made with a few lines
of numpy each, with captions in the words a student would type. A clip is fixed by (seed, index) alone,
so nothing is stored on disk and every run sees the same data.

  KINDS, CAPTIONS, PARAPHRASES   the twelve kinds, the phrases their captions are made of, held-out prompts
  synth_*, SYNTHS                one small synthesiser per kind
  toy_clip, ToyDataset           one clip (wav, caption, kinds) from (seed, index); a split of them

In:  a seed and an index
Out: dict items {"wav": (T,) float32 at 22050 Hz, "caption": str, "kind": int, "id": str}
Run alone: python -m data.toyworld   # prints some captions and times 1000 toy clips
"""

import time

import numpy as np
import torch

from mel import SR, TOY_SAMPLES
from ground.runtime import UserError


# Every kind of sound is a small synthesiser: a function (rng, n) -> (waveform (n,), tag). The
# waveform's level does not matter (the mixer normalises it); the tag (like "heavy" for rain or
# "small" for a dog) names a property the synthesiser chose at random, so that the caption can say it
# ("a puppy yapping" is a high-pitched dog). That is what makes the captions carry information about
# the sound beyond its kind, as real captions do.
#
# Three tricks keep the synthesis fast (far cheaper than a training step, so clips are made on the fly):
#   - noise of any colour is made directly in the frequency domain (one inverse FFT);
#   - short events (raindrops, key presses, footsteps) are rows of a matrix (events, length),
#     computed in one vectorised expression and added into the clip with np.bincount;
#   - long tones are sums of a handful of sines of a running phase (np.cumsum of the frequency).

KINDS = [
    "rain on a roof",
    "a dog barking",
    "birds chirping",
    "a siren",
    "a car engine idling",
    "footsteps",
    "a clock ticking",
    "a church bell",
    "wind blowing",
    "ocean waves",
    "typing on a keyboard",
    "a phone ringing",
]

# Captions: for each kind, noun phrases for any clip ("any") and for clips whose synthesiser picked a
# tag. A tagged clip draws half of its captions from the tag's list. The words are the ones people use
# (downpour, drizzle, puppy, yapping, ...): a text encoder trained on these captions learns its whole
# vocabulary from them, so the synonyms are what lets it understand a prompt it never saw verbatim.
CAPTIONS = {
    "rain on a roof": {
        "any": ["rain on a roof", "rain falling on a roof", "rain drumming on the roof", "raindrops pattering",
                "raindrops hitting a roof", "the sound of rain", "rain falling outside"],
        "heavy": ["heavy rain falling on a roof", "a downpour drumming on the roof", "a heavy downpour",
                  "rain pouring down"],
        "light": ["light rain on a roof", "a gentle drizzle", "light rain falling", "soft rain pattering on the roof"],
    },
    "a dog barking": {
        "any": ["a dog barking", "a dog barks", "dog barking loudly", "a barking dog", "a dog barking repeatedly"],
        "big": ["a big dog barking", "a large dog barking in a deep voice", "a big dog woofing"],
        "small": ["a puppy yapping", "a small dog yapping", "a little dog barking"],
    },
    "birds chirping": {
        "any": ["birds chirping", "birds singing", "a bird chirping", "birds tweeting in the trees",
                "songbirds chirping", "birds chirping in the morning"],
    },
    "a siren": {
        "any": ["a siren", "a siren wailing", "an emergency siren", "a police siren", "an ambulance siren going by",
                "a fire truck siren"],
        "wail": ["a siren wailing slowly", "a long wailing siren"],
        "yelp": ["a fast yelping siren", "a police siren yelping"],
        "two-tone": ["a two-tone siren", "an ambulance siren going up and down"],
    },
    "a car engine idling": {
        "any": ["a car engine idling", "an idling car engine", "a car engine purring", "a motor idling",
                "an engine rumbling"],
        "revving": ["a car engine revving", "an engine revving up", "a car idling and revving"],
    },
    "footsteps": {
        "any": ["footsteps", "footsteps on a hard floor", "someone walking", "the sound of footsteps",
                "footsteps passing by"],
        "walking": ["someone walking slowly", "footsteps walking down a hallway"],
        "running": ["someone running", "fast footsteps running", "a person running"],
    },
    "a clock ticking": {
        "any": ["a clock ticking", "a clock ticks", "the ticking of a clock", "a wall clock ticking",
                "a clock ticking steadily", "tick tock of a clock"],
    },
    "a church bell": {
        "any": ["a church bell", "a church bell ringing", "church bells ringing", "a bell tolling",
                "a large bell ringing", "a church bell tolling", "bells chiming from a church"],
    },
    "wind blowing": {
        "any": ["wind blowing", "the wind blowing", "strong wind blowing", "wind gusting", "a gusty wind",
                "wind blowing outside"],
        "howling": ["wind howling", "the wind howling and whistling", "a howling wind"],
    },
    "ocean waves": {
        "any": ["ocean waves", "ocean waves crashing", "waves crashing on a beach", "the sea",
                "waves breaking on the shore", "the ocean surf", "sea waves rolling in"],
        "crashing": ["big waves crashing", "ocean waves crashing on the shore"],
        "gentle": ["gentle waves lapping", "calm ocean waves"],
    },
    "typing on a keyboard": {
        "any": ["typing on a keyboard", "someone typing on a keyboard", "keyboard typing",
                "a person typing on a computer keyboard", "fingers tapping on a keyboard",
                "clicking keys of a keyboard"],
    },
    "a phone ringing": {
        "any": ["a phone ringing", "a telephone ringing", "a phone rings", "a cell phone ringing",
                "a mobile phone ringing", "a phone ringing repeatedly"],
        "old": ["an old telephone ringing", "an old rotary phone ringing"],
    },
}

# The second sound of a two-sound clip is often said as a clause: "birds chirping while rain falls".
CLAUSES = {
    "rain on a roof": ["rain falls", "it rains", "rain patters on the roof"],
    "a dog barking": ["a dog barks", "a dog is barking"],
    "birds chirping": ["birds chirp", "birds sing"],
    "a siren": ["a siren wails", "a siren goes by"],
    "a car engine idling": ["a car engine idles", "an engine runs"],
    "footsteps": ["someone walks", "footsteps pass by"],
    "a clock ticking": ["a clock ticks", "a clock is ticking"],
    "a church bell": ["a church bell rings", "a bell tolls"],
    "wind blowing": ["the wind blows", "wind howls"],
    "ocean waves": ["waves crash", "the sea roars"],
    "typing on a keyboard": ["someone types", "someone is typing on a keyboard"],
    "a phone ringing": ["a phone rings", "a telephone rings"],
}

# Held-out prompts: made only of words that occur in the captions above, but never a training caption
# verbatim. A text encoder (and the whole text-to-audio model) that answers these has learnt the
# words, not memorised the sentences.
PARAPHRASES = {
    "rain on a roof": ["rain pattering on a roof", "heavy rain drumming", "raindrops falling on the roof"],
    "a dog barking": ["a big dog barks loudly", "a small puppy barking", "a dog yapping repeatedly"],
    "birds chirping": ["a bird singing in the trees", "songbirds tweeting", "birds singing in the morning"],
    "a siren": ["a fire truck siren wailing", "a police siren going by", "an emergency siren yelping"],
    "a car engine idling": ["a car motor idling", "the engine of a car idling", "a motor revving up"],
    "footsteps": ["a person walking on a hard floor", "fast footsteps passing by", "someone walking down a hallway"],
    "a clock ticking": ["a wall clock ticks steadily", "the ticking of a wall clock", "a clock ticking on the wall"],
    "a church bell": ["a large church bell tolling", "bells ringing from a church", "a church bell chiming"],
    "wind blowing": ["a strong gusty wind", "the wind whistling outside", "wind gusting and howling"],
    "ocean waves": ["waves crashing on the shore", "the ocean waves breaking", "gentle sea waves on a beach"],
    "typing on a keyboard": ["a person typing on a keyboard", "someone typing on a computer", "tapping keys on a keyboard"],
    "a phone ringing": ["a telephone ringing repeatedly", "an old phone rings", "a cell phone rings"],
}

P_MIX = 0.25            # share of toy clips that mix two kinds of sound
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}   # the three splits never share a (seed, index)
SPLIT_SIZES = {"train": 10000, "val": 500, "test": 500}   # default lengths (items are made on demand)


# ---------------------------------------------------------------------------------------------------
# Signal building blocks
# ---------------------------------------------------------------------------------------------------

def band_noise(rng, n: int, lo: float, hi: float, tilt: float = 0.0) -> np.ndarray:
    """Gaussian noise (n,) with a smooth band-pass spectrum lo..hi Hz and a 1/f^tilt power slope.

    Made directly in the frequency domain: complex Gaussian bins times the filter's gain, then one
    inverse FFT (tilt 0 = white, 1 = pink, 2 = brown). Returned with unit standard deviation.
    """
    f = np.fft.rfftfreq(n, 1 / SR)                                  # (n//2+1,) bin frequencies in Hz
    f[0] = f[1]                                                     # avoid dividing by zero at DC
    gain = f ** (-tilt / 2) / np.sqrt((1 + np.square(np.square(lo / f))) * (1 + np.square(np.square(f / hi))))
    return shaped(rng, gain, n)                                     # the gain has 2nd-order skirts


def peak_noise(rng, n: int, centre: float, width: float) -> np.ndarray:
    """Narrow-band noise (n,) around `centre` Hz (Gaussian spectral peak of std `width` Hz): a whistle."""
    f = np.fft.rfftfreq(n, 1 / SR)
    return shaped(rng, np.exp(-0.5 * np.square((f - centre) / width)), n)


def shaped(rng, gain: np.ndarray, n: int) -> np.ndarray:
    """White noise in the frequency domain (a complex Gaussian per bin) times `gain`, back to (n,) samples.

    float32 throughout: the toy world does not need more, and it halves the time of the FFT.
    """
    bins = rng.standard_normal(2 * gain.size, dtype=np.float32).view(np.complex64)   # (n//2+1,) complex
    x = np.fft.irfft(bins * gain.astype(np.float32), n).astype(np.float64)
    return x / (x.std() + 1e-12)


def smooth_curve(rng, n: int, step_s: float, lo: float, hi: float) -> np.ndarray:
    """A slowly wandering curve (n,): random values in [lo, hi] every `step_s` seconds, joined smoothly."""
    knots = max(2, int(n / SR / step_s) + 2)
    values = rng.uniform(lo, hi, knots)
    u = np.linspace(0, knots - 1, n // 64 + 2)                      # a coarse grid is enough for a slow curve
    i = np.minimum(u.astype(int), knots - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (u - i))                         # cosine ease between neighbouring knots
    coarse = values[i] * (1 - w) + values[i + 1] * w
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, coarse.size), coarse)


def damped_sines(freqs, taus, length: int) -> np.ndarray:
    """Rows of decaying sines (E, length): the sound of something struck (a drop, a key, a tick)."""
    t = np.arange(length) / SR                                      # (L,) seconds
    freqs, taus = np.asarray(freqs, float)[:, None], np.asarray(taus, float)[:, None]
    return np.sin(2 * np.pi * freqs * t) * np.exp(-t / taus)        # (E, L)


def noise_bursts(rng, count: int, length: int, lo: float, hi: float, tau: float) -> np.ndarray:
    """Rows of band-passed noise with an exponential decay (count, length): thumps, clicks, crunches."""
    f = np.fft.rfftfreq(length, 1 / SR)
    f[0] = f[1]
    gain = 1 / np.sqrt((1 + (lo / f) ** 4) * (1 + (f / hi) ** 4))
    spec = (rng.standard_normal((count, f.size)) + 1j * rng.standard_normal((count, f.size))) * gain
    x = np.fft.irfft(spec, length, axis=-1)                         # (count, length)
    x /= x.std(axis=-1, keepdims=True) + 1e-12
    return x * np.exp(-np.arange(length) / SR / tau)


def overlap_add(n: int, starts, events: np.ndarray) -> np.ndarray:
    """Add event rows (E, L) into a silent clip (n,) at sample positions `starts` (E,); parts past n drop.

    np.bincount with weights is a fast scatter-add: every (event, sample) pair names its target sample.
    """
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros(n)
    idx = starts[:, None] + np.arange(events.shape[1])              # (E, L) target sample of each value
    keep = (idx >= 0) & (idx < n)
    return np.bincount(idx[keep], weights=events[keep], minlength=n)[:n]


def tone(freq: np.ndarray, harmonics) -> np.ndarray:
    """A periodic tone following the frequency curve `freq` (n,) Hz: sum of a_k sin(k * phase).

    The phase is the running sum of the frequency, so glides (sirens, barks) are smooth. Harmonics
    that would pass the Nyquist frequency are left out (they would alias into wrong pitches).
    """
    phase = 2 * np.pi * np.cumsum(freq) / SR                        # (n,) radians
    out = np.zeros_like(phase)
    top = freq.max()
    for k, a in enumerate(harmonics, start=1):
        if k * top < 0.45 * SR:
            out += a * np.sin(k * phase)
    return out


def event_times(rng, dur: float, first: tuple, gap: tuple) -> np.ndarray:
    """Onsets in seconds: the first in [first], then gaps drawn from [gap] until the clip ends."""
    times, t = [], rng.uniform(*first)
    while t < dur:
        times.append(t)
        t += rng.uniform(*gap)
    return np.array(times)


# ---------------------------------------------------------------------------------------------------
# The twelve synthesisers, one per kind, in the order of KINDS
# ---------------------------------------------------------------------------------------------------

def synth_rain(rng, n):
    """Rain on a roof: thousands of tiny struck "plinks" at random times over a hiss of broadband noise."""
    heavy = rng.random() < 0.5
    rate = rng.uniform(800, 2000) if heavy else rng.uniform(150, 500)   # drops per second
    count = rng.poisson(rate * n / SR)
    pool = damped_sines(rng.uniform(1200, 6000, 8), rng.uniform(0.001, 0.003, 8), 192)   # 8 drop sounds
    drops = rng.lognormal(0, 0.7, count)[:, None] * pool[rng.integers(0, 8, count)]      # (count, 192)
    x = overlap_add(n, rng.integers(0, n, count), drops)
    x /= x.std() + 1e-12
    hiss = band_noise(rng, n, lo=rng.uniform(300, 1200), hi=rng.uniform(4000, 9000), tilt=0.5)
    return x + (0.7 if heavy else 0.25) * rng.uniform(0.6, 1.4) * hiss, "heavy" if heavy else "light"


def synth_dog(rng, n):
    """A dog barking: short harmonic bursts whose pitch jumps up and falls, in groups of one to four."""
    big = rng.random() < 0.5
    f0 = rng.uniform(170, 380) if big else rng.uniform(550, 900)        # bark pitch: big dogs are lower
    formant = rng.uniform(700, 1400) if big else rng.uniform(1300, 2600)  # the mouth's resonance
    x, dur = np.zeros(n), n / SR
    t, group = rng.uniform(0, 0.25 * dur), 0
    while t < dur - 0.05:
        length = int(SR * rng.uniform(0.12, 0.28) * (1.2 if big else 0.8))
        u = np.arange(length) / length                                  # 0..1 through the bark
        pitch = f0 * rng.uniform(0.9, 1.1) * (0.8 + 0.45 * np.sin(np.pi * u ** 0.6))   # jump up, fall back
        k = np.arange(1, 16)
        weights = np.exp(-0.5 * ((k * f0 - formant) / (0.7 * formant)) ** 2) + 0.3 / k
        voice = tone(pitch, weights)
        rough = noise_bursts(rng, 1, length, 300, 4000, 1.0)[0]       # breath and growl
        env = (1 - np.exp(-u * length / SR / 0.008)) * np.exp(-u * 3.0)
        bark = env * (voice / (voice.std() + 1e-12) + 0.35 * rough)
        start = int(t * SR)
        x[start:start + length] += bark[: n - start]
        group += 1
        if group >= rng.integers(1, 5):                                  # end of a group of barks
            t, group = t + length / SR + rng.uniform(0.5, 1.4), 0
        else:
            t += length / SR + rng.uniform(0.08, 0.3)
    return x, "big" if big else "small"


def synth_birds(rng, n):
    """Birds chirping: one to three birds, each repeating calls of fast high sweeps or trills."""
    dur = n / SR
    starts, f_from, f_to, lengths, trill = [], [], [], [], []
    for _ in range(rng.integers(1, 4)):
        base = rng.uniform(2500, 5500)                                  # this bird's register in Hz
        style = rng.integers(3)                                         # 0 down-sweep, 1 up-sweep, 2 trill
        for call in event_times(rng, dur, (0, 0.4), (0.3, 1.2)):
            t = call
            for _ in range(rng.integers(1, 7)):                         # syllables of one call
                span = rng.uniform(300, 2000)
                starts.append(t)
                f_from.append(base + (span if style == 0 else 0))
                f_to.append(base + (span if style == 1 else 0))
                lengths.append(rng.uniform(0.025, 0.09))
                trill.append(rng.uniform(25, 60) if style == 2 else 0.0)
                t += lengths[-1] + rng.uniform(0.02, 0.08)
    L = int(0.09 * SR)
    s = np.arange(L) / SR                                               # (L,) seconds into the syllable
    lengths, trill = np.array(lengths)[:, None], np.array(trill)[:, None]
    u = np.clip(s / lengths, 0, 1)                                      # (E, L) 0..1 through each syllable
    freq = np.array(f_from)[:, None] * (1 - u) + np.array(f_to)[:, None] * u + 400 * np.sin(2 * np.pi * trill * s)
    phase = 2 * np.pi * np.cumsum(freq, axis=1) / SR
    syllables = np.sin(phase) * np.sin(np.pi * u) ** 2 * rng.uniform(0.3, 1.0, (len(starts), 1))
    return overlap_add(n, (np.array(starts) * SR).astype(int), syllables), None


def synth_siren(rng, n):
    """A siren: a bright tone gliding between two pitches, slowly (wail), fast (yelp) or in steps (two-tone)."""
    t = np.arange(n) / SR
    lo = rng.uniform(500, 900)
    hi = lo * rng.uniform(1.4, 2.0)
    style = ["wail", "yelp", "two-tone"][rng.integers(3)]
    if style == "two-tone":
        half = rng.uniform(0.4, 0.8)                                    # seconds per tone
        step = (np.floor(t / half + rng.random()) % 2)
        ramp = np.convolve(step, np.ones(200) / 200, mode="same")      # 9 ms slide between the tones
        freq = lo + (hi - lo) * ramp
    else:
        period = rng.uniform(1.5, 4.0) if style == "wail" else rng.uniform(0.15, 0.35)
        freq = lo + (hi - lo) * (0.5 - 0.5 * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))
    x = tone(freq, [1.0, rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3)])
    if rng.random() < 0.4:                                              # passing by: swells or fades
        x *= np.linspace(*(rng.permutation([rng.uniform(0.2, 0.5), 1.0])), n)
    return x, style


def synth_engine(rng, n):
    """A car engine idling: a low train of combustion thumps (20-45 per second) with a little wobble."""
    t = np.arange(n) / SR
    rate = rng.uniform(20, 45) * smooth_curve(rng, n, 0.5, 0.97, 1.03)     # firings per second
    revving = rng.random() < 0.3
    if revving:                                                          # press the pedal once
        centre, width = rng.uniform(0.2, 0.8) * n / SR, rng.uniform(0.4, 0.9)
        rate = rate * (1 + rng.uniform(0.6, 1.5) * np.exp(-0.5 * ((t - centre) / (0.4 * width)) ** 2))
    cycles = np.cumsum(rate) / SR                                        # firings so far
    fire = np.flatnonzero(np.diff(np.floor(cycles)) > 0)                 # sample of every firing
    cylinders = 4
    L = 1024
    pool = (damped_sines(rng.uniform(60, 400, cylinders), rng.uniform(0.008, 0.02, cylinders), L)
            + 0.3 * noise_bursts(rng, cylinders, L, 100, 1500, 0.006))   # one thump sound per cylinder
    amps = rng.uniform(0.7, 1.0, cylinders)[np.arange(len(fire)) % cylinders]
    x = overlap_add(n, fire, amps[:, None] * pool[np.arange(len(fire)) % cylinders])
    x /= x.std() + 1e-12
    rumble = band_noise(rng, n, 30, 250, tilt=1.0)
    return x + rng.uniform(0.2, 0.5) * rumble, "revving" if revving else None


def synth_footsteps(rng, n):
    """Footsteps: a heel thump and a softer toe, 1.3-2.2 steps a second (walking) or ~3 (running)."""
    running = rng.random() < 0.3
    period = 1 / (rng.uniform(2.6, 3.4) if running else rng.uniform(1.3, 2.2))
    times = np.arange(rng.uniform(0, 0.4), n / SR, period)
    times = times + rng.normal(0, 0.02 * period, len(times))             # nobody walks like a metronome
    gravel = rng.random() < 0.4
    L = int(0.2 * SR)
    lo, hi = rng.uniform(80, 200), rng.uniform(800, 2500)
    heel = noise_bursts(rng, len(times), L, lo, hi, rng.uniform(0.012, 0.03))
    toe = np.roll(noise_bursts(rng, len(times), L, lo * 2, hi * 1.5, 0.01), int(rng.uniform(0.05, 0.1) * SR), axis=1)
    toe[:, : int(0.05 * SR)] = 0                                          # undo np.roll's wrap-around
    steps = heel + 0.5 * toe
    if gravel:                                                           # crunch: sparse clicks, slower decay
        grit = rng.standard_normal((len(times), L)) * (rng.random((len(times), L)) < 0.08)
        steps += 0.6 * grit * np.exp(-np.arange(L) / SR / 0.05)
    steps *= rng.uniform(0.6, 1.0, (len(times), 1))
    return overlap_add(n, (times * SR).astype(int), steps), "running" if running else "walking"


def synth_clock(rng, n):
    """A clock ticking: short bright clicks at a perfectly steady 1 or 2 per second, tick and tock alternating."""
    period = rng.choice([0.5, 1.0]) * rng.uniform(0.97, 1.03)
    times = np.arange(rng.uniform(0, 0.5), n / SR, period)
    f1 = rng.uniform(1800, 4500)
    tau = rng.uniform(0.002, 0.006)
    L = 1024
    tick = damped_sines([f1, f1 * 1.7], [tau, tau / 2], L).sum(0)
    tock = damped_sines([f1 * rng.uniform(0.7, 0.9), f1 * 1.4], [tau, tau / 2], L).sum(0)
    late = int(rng.uniform(0.01, 0.02) * SR)                             # the escapement's second click
    tick[late:] += 0.3 * tick[: L - late]
    pool = np.stack([tick, tock * rng.uniform(0.6, 0.9)])
    return overlap_add(n, (times * SR).astype(int), pool[np.arange(len(times)) % 2]), None


BELL_PARTIALS = np.array([0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 3.011])   # hum, prime, tierce, quint, nominal, ... (ratios of a tuned church bell)


def synth_bell(rng, n):
    """A church bell: inharmonic partials with long decays (the low hum rings longest), struck 1-4 times."""
    t = np.arange(n, dtype=np.float32) / SR
    prime = rng.uniform(180, 500)
    ring = rng.uniform(1.5, 4.0)                                         # decay time of the prime, seconds
    strike = np.zeros(n, dtype=np.float32)
    for ratio, amp in zip(BELL_PARTIALS, rng.uniform(0.4, 1.0, len(BELL_PARTIALS))):
        phase = (2 * np.pi * prime * ratio * t.astype(np.float64)) % (2 * np.pi)
        beat = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t)   # two close modes beating
        strike += amp * np.sin(phase.astype(np.float32)) * np.exp(-t / (ring / ratio ** 0.8)) * beat
    strike[:256] += noise_bursts(rng, 1, 256, 2000, 8000, 0.002)[0]       # the clapper's clang
    x = np.zeros(n)
    for onset in event_times(rng, n / SR, (0, 0.3), (0.9, 2.2)):
        s = int(onset * SR)
        x[s:] += rng.uniform(0.7, 1.0) * strike[: n - s]
    return x, None


def synth_wind(rng, n):
    """Wind blowing: dark noise swelling in slow gusts, a brighter rush on the peaks, sometimes a whistle."""
    gust = smooth_curve(rng, n, rng.uniform(0.4, 1.0), 0.15, 1.0)
    dark = band_noise(rng, n, 40, rng.uniform(300, 900), tilt=1.0)
    bright = band_noise(rng, n, 500, 3000)
    x = gust * dark + 0.35 * gust ** 2 * bright
    howling = rng.random() < 0.4
    if howling:
        x += rng.uniform(0.3, 0.7) * gust ** 3 * peak_noise(rng, n, rng.uniform(400, 1400), rng.uniform(10, 40))
    return x, "howling" if howling else None


def synth_waves(rng, n):
    """Ocean waves: surf that builds up, crashes with a bright hiss, and washes out; the sea never stops."""
    t = np.arange(n) / SR
    gentle = rng.random() < 0.35
    period = rng.uniform(2.0, 5.0)
    env = np.full(n, rng.uniform(0.15, 0.35) * (2 if gentle else 1))      # the steady background of the sea
    crash = np.zeros(n)
    for tc in np.arange(rng.uniform(0.2, 0.7) * min(period, n / SR), n / SR, period):
        d = t - tc
        wash = rng.uniform(0.6, 1.5)
        env += np.where(d < 0, np.exp(d / 0.5), np.exp(-d / wash))          # build up, then wash out
        crash += np.where(d < 0, 0, np.exp(-d / (0.3 * wash)))
    rumble = band_noise(rng, n, 60, 1500, tilt=1.0)
    hiss = band_noise(rng, n, 800, 7000)
    return env * rumble + (0.3 if gentle else 0.8) * crash * hiss, "gentle" if gentle else "crashing"


def synth_typing(rng, n):
    """Typing on a keyboard: bursts of 2-8 key clicks (a word), then a pause; press and release clicks."""
    dur = n / SR
    times, t = [], rng.uniform(0, 0.3)
    while t < dur:
        for _ in range(rng.integers(2, 9)):
            times.append(t)
            t += rng.uniform(0.07, 0.2)
        t += rng.uniform(0.15, 0.6)
    L = int(0.1 * SR)
    keys = 6
    click = damped_sines(rng.uniform(2000, 5000, keys), rng.uniform(0.0015, 0.004, keys), L)
    thump = noise_bursts(rng, keys, L, 300, 1500, 0.008)
    release = np.roll(damped_sines(rng.uniform(2500, 6000, keys), np.full(keys, 0.002), L),
                      int(rng.uniform(0.04, 0.08) * SR), axis=1)
    pool = click + 0.5 * thump + 0.4 * release                           # (keys, L) the sound of each key
    which = rng.integers(0, keys, len(times))
    amps = rng.lognormal(0, 0.3, len(times))[:, None]
    return overlap_add(n, (np.array(times) * SR).astype(int), amps * pool[which]), None


def synth_phone(rng, n):
    """A phone ringing: an electronic trill or an old hammer-and-bell ringer, in single or double rings."""
    t = np.arange(n) / SR
    old = rng.random() < 0.4
    if old:                                                              # a hammer hits two bells ~20 times a second
        f = rng.uniform(1100, 2000)
        hammer = np.exp(-((t * rng.uniform(16, 24)) % 1) / 0.3)
        x = hammer * (np.sin(2 * np.pi * f * t) + 0.6 * np.sin(2 * np.pi * f * 2.76 * t)
                      + 0.5 * np.sin(2 * np.pi * f * 1.19 * t))
    else:                                                                # two tones alternating 12-25 times a second
        f1 = rng.uniform(1000, 1800)
        freq = np.where((t * rng.uniform(12, 25)) % 1 < 0.5, f1, f1 * rng.uniform(1.15, 1.35))
        x = tone(freq, [1.0, 0, 0.33, 0, 0.2])                          # square-ish: odd harmonics
    if rng.random() < 0.5:                                               # one long ring, then a pause
        on = [(0.0, rng.uniform(0.6, 1.2))]
    else:                                                                # "brr-brr": two short rings, then a pause
        ring, gap = rng.uniform(0.3, 0.45), rng.uniform(0.15, 0.25)
        on = [(0.0, ring), (ring + gap, 2 * ring + gap)]
    cycle = on[-1][1] + rng.uniform(0.5, 1.2)
    gate = np.zeros(n)
    for start in np.arange(rng.uniform(0, 0.3), n / SR, cycle):
        for a, b in on:
            gate[int((start + a) * SR): int((start + b) * SR)] = 1.0
    gate = np.convolve(gate, np.ones(110) / 110, mode="same")           # 5 ms fades: no clicks at the edges
    return x * gate, "old" if old else None


SYNTHS = [synth_rain, synth_dog, synth_birds, synth_siren, synth_engine, synth_footsteps, synth_clock,
          synth_bell, synth_wind, synth_waves, synth_typing, synth_phone]   # one per entry of KINDS


# ---------------------------------------------------------------------------------------------------
# One clip: a kind (sometimes two), a room, a background, a level, a caption
# ---------------------------------------------------------------------------------------------------

def phrase(rng, kind: int, tag) -> str:
    """A noun phrase for a sound of `kind`; with a tag, half of the time one that says the tag."""
    options = CAPTIONS[KINDS[kind]]
    if tag in options and rng.random() < 0.5:
        return str(rng.choice(options[tag]))
    return str(rng.choice(options["any"]))


def caption_for(rng, kinds: list, tags: list) -> str:
    """The caption of a clip: one noun phrase, or for two sounds one of four ways of naming both."""
    first = phrase(rng, kinds[0], tags[0])
    if len(kinds) == 1:
        return first
    form = rng.integers(4)
    if form == 0:
        return f"{first} while {rng.choice(CLAUSES[KINDS[kinds[1]]])}"       # "birds chirping while rain falls"
    second = phrase(rng, kinds[1], tags[1])
    second = second[0].lower() + second[1:]
    if form == 1:
        return f"{first} and {second}"
    if form == 2:
        return f"{first} with {second} in the background"
    return f"{first} as {rng.choice(CLAUSES[KINDS[kinds[1]]])}"


def toy_caption_phrases() -> list[str]:
    """Every phrase and connecting word the toy captions are built from (a text encoder's vocabulary
    can be read off these without synthesising a single clip)."""
    phrases = [p for kind in CAPTIONS.values() for options in kind.values() for p in options]
    phrases += [c for clauses in CLAUSES.values() for c in clauses]
    return phrases + ["while", "and", "with in the background", "as"]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)) + 1e-12)


def toy_clip(seed: int, index: int, num_samples: int = TOY_SAMPLES, p_mix: float = P_MIX):
    """Item `index` of the toy world under `seed`: (wav (num_samples,) float32 tensor, caption, kind ids).

    Everything random comes from one numpy Generator seeded with (seed, index), so the same pair always
    gives the same clip, on any machine, in any order, in any DataLoader worker. The first kind cycles
    through KINDS with the index (every 12 consecutive items hold every kind once as the main sound);
    with probability `p_mix` (P_MIX unless a shifted world is asked for) a second, different kind is
    mixed in, 3-9 dB quieter. Another p_mix changes only which clips get a second sound: the random draws
    are the same, so the clips that stay single are the same clips.
    """
    rng = np.random.default_rng([seed, index])
    n = num_samples
    kinds = [index % len(KINDS)]
    if rng.random() < p_mix:
        kinds.append(int((kinds[0] + rng.integers(1, len(KINDS))) % len(KINDS)))
    x, tags = np.zeros(n), []
    for i, k in enumerate(kinds):
        part, tag = SYNTHS[k](rng, n)
        gain = 1.0 if i == 0 else 10 ** (-rng.uniform(3, 9) / 20)       # the second sound sits behind
        x += gain * part / rms(part)
        tags.append(tag)
    if rng.random() < 0.3:                                               # a room: exponentially decaying noise
        rt = rng.uniform(0.2, 0.6)                                       # reverberation time in seconds
        L = min(n, int(rt * SR))
        ir = rng.standard_normal(L) * np.exp(-6.9 * np.arange(L) / (rt * SR))   # -60 dB after rt
        size = 1 << int(np.ceil(np.log2(n + L)))
        wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:n]
        x += rng.uniform(0.1, 0.4) * wet * rms(x) / rms(wet)
    floor_db = rng.uniform(-45, -25)                                     # background noise level vs the sound
    x += 10 ** (floor_db / 20) * rms(x) * band_noise(rng, n, rng.uniform(20, 200), rng.uniform(2000, 9000),
                                                     tilt=rng.uniform(0, 2))
    x *= rng.uniform(0.5, 0.9) / (np.abs(x).max() + 1e-12)              # peak level between -6 and -1 dB
    return torch.from_numpy(x.astype(np.float32)), caption_for(rng, kinds, tags), kinds


class ToyDataset(torch.utils.data.Dataset):
    """`n` toy clips of one split; item i is toy_clip(split seed, i), made when asked for (or cached).

    The split seeds are 10 * seed + (0, 1, 2) for train, val, test, so the splits never share a clip.
    p_mix: the share of two-sound clips; another value than P_MIX is a shifted world (the fine-tuning
    target of Table 4 in miniature: pre-train on the usual world, fine-tune on one of other mixtures).
    """

    def __init__(self, split: str = "train", n: int | None = None, num_samples: int = TOY_SAMPLES,
                 seed: int = 0, cache: bool = False, p_mix: float = P_MIX):
        if split not in SPLIT_SEEDS:
            raise UserError(f"the toy world has splits train, val and test, not {split!r}.")
        if not 0 <= p_mix <= 1:
            raise UserError(f"the share of two-sound toy clips must be between 0 and 1, not {p_mix}.")
        self.split, self.num_samples, self.p_mix = split, num_samples, p_mix
        self.n = SPLIT_SIZES[split] if n is None else n
        self.seed = 10 * seed + SPLIT_SEEDS[split]
        self.cache = {} if cache else None

    def __len__(self):
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        wav, caption, kinds = toy_clip(self.seed, i, self.num_samples, self.p_mix)
        item = {"wav": wav, "caption": caption, "kind": kinds[0], "id": f"toy-{self.split}-{i}"}
        if self.cache is not None:
            self.cache[i] = item
        return item


if __name__ == "__main__":
    print("Some toy captions:")
    for i in range(8):
        print("  ", toy_clip(0, i)[1])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(1000):
        toy_clip(0, i)
    print(f"1000 toy clips of {TOY_SAMPLES} samples: {time.perf_counter() - start:.2f} s "
          f"({time.process_time() - cpu:.2f} s of CPU time)")
