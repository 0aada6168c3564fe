"""
formats/hifigan_format.py — HiFiGAN generators for inference: our checkpoints and the official released ones,
loaded, with weight norm folded. Running one is vocoder.vocode (or speed/fast.vocode_chunked on a CPU).

The official implementation (github.com/jik876/hifi-gan, models.py) saves its generators
(generator_v1, _v2, _v3) as {"generator": state_dict}, with the module names that vocoder.py keeps
(conv_pre, ups.N, resblocks.N.convs1.M / convs2.M or convs.M, conv_post) and PyTorch's old weight-norm
names. This file renames those tensors, reads the generator's config (v1, v2 or v3) off their shapes,
checks a config the caller asks for, and builds a ready-to-run vocoder.Generator. SpecMaskGIT uses the
official V1 weights unchanged (Sec. 3.1), which is why its mel is HiFiGAN's own recipe (mel.py).

In:  a path or checkpoint dict: ours ({"stage": "vocoder", "config", "model"}) or the official one
Out: vocoder.Generator in eval mode with weight norm folded (load_vocoder)
"""

from dataclasses import dataclass

from torch.nn.utils import parametrize

from ground.runtime import UserError, check_config, config_from_dict, load_checkpoint, same_value
from vocoder import PRESETS, Config, Generator

# The generator fields: what a checkpoint's tensor shapes (and the official config files) determine.
GENERATOR_FIELDS = ("resblock", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                    "resblock_kernel_sizes", "resblock_dilation_sizes", "n_mels")

# torch.nn.utils.weight_norm (the old API the official code used) stored each normalised weight as
# two tensors, `<conv>.weight_g` (the norm g, shape (out, 1, 1) for Conv1d; (in, 1, 1) for
# ConvTranspose1d, whose dim 0 is the input channels) and `<conv>.weight_v` (the direction v, the
# weight's shape), with weight = g * v / ||v||. The parametrization API used here names the same two
# tensors `<conv>.parametrizations.weight.original0` (g) and `.original1` (v).

OLD_TO_NEW = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def rename_suffixes(state: dict, mapping: dict) -> dict:
    """A copy of `state` with every key ending in a `mapping` key given that key's value as its ending."""
    out = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def from_official_names(state: dict) -> dict:
    """Rename weight_g / weight_v to the parametrization names; other keys pass unchanged."""
    return rename_suffixes(state, OLD_TO_NEW)


def to_official_names(state: dict) -> dict:
    """The inverse of from_official_names: our weight-normed state_dict as the official code saves it."""
    return rename_suffixes(state, {new: old for old, new in OLD_TO_NEW.items()})


def _weight_shape(state: dict, conv: str) -> tuple:
    """Shape of a conv's weight whether stored plain, weight-normed (v) or with the old name."""
    for suffix in (".weight", ".parametrizations.weight.original1", ".weight_v"):
        if conv + suffix in state:
            return tuple(state[conv + suffix].shape)
    raise UserError(f"the vocoder checkpoint has no weights for {conv}; it is not a HiFiGAN generator.")


def infer_generator_fields(state: dict) -> dict:
    """Read the generator's shape (Config fields) off the tensors of a state_dict.

    conv_pre's weight is (h_u, n_mels, 7); ups.i's is (C_in, C_out, k_u); the stride is not stored, but
    the official layouts use k_u = 2u. ResBlock1 has convs1/convs2, ResBlock2 has convs; the kernel
    sizes are the last dimension of each MRF block's first conv. Dilations leave no trace in the shapes:
    they come from the preset whose shapes match.
    """
    h_u, n_mels, _ = _weight_shape(state, "conv_pre")
    n_ups = len({k.split(".")[1] for k in state if k.startswith("ups.")})
    kernels_u = tuple(_weight_shape(state, f"ups.{i}")[2] for i in range(n_ups))
    resblock = "1" if any(".convs1." in k for k in state) else "2"
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("resblocks.")})
    first = "convs1.0" if resblock == "1" else "convs.0"
    per_level = n_blocks // max(n_ups, 1)
    kernels_r = tuple(_weight_shape(state, f"resblocks.{j}.{first}")[2] for j in range(per_level))
    return dict(resblock=resblock, upsample_initial_channel=h_u, n_mels=n_mels,
                upsample_kernel_sizes=kernels_u, upsample_rates=tuple(k // 2 for k in kernels_u),
                resblock_kernel_sizes=kernels_r)


def infer_config(state: dict) -> tuple:
    """(name, Config) of the official preset (v1, v2, v3) whose tensor shapes match `state`."""
    found = infer_generator_fields(state)
    for name in ("v1", "v2", "v3"):
        cfg = PRESETS[name]
        if all(same_value(getattr(cfg, k), v) for k, v in found.items()):
            return name, cfg
    shown = ", ".join(f"{k}={v}" for k, v in found.items())
    raise UserError(f"the vocoder checkpoint's shapes ({shown}) match none of the HiFiGAN configs v1, v2, v3; "
                    f"pass a Config that matches.")


def _resolve(config) -> Config | None:
    if config is None or isinstance(config, Config):
        return config
    if config not in ("v1", "v2", "v3"):
        raise UserError(f"the vocoder config must be v1, v2, v3 or a vocoder.Config, not {config!r}.")
    return PRESETS[config]


def from_checkpoint(ckpt: dict) -> Generator:
    """Rebuild the generator from one of our checkpoints (its stored config); eval mode, weight norm removed."""
    if ckpt.get("stage") != "vocoder":
        raise UserError(f"this is a {ckpt.get('stage', 'foreign')} checkpoint, not a vocoder one.")
    cfg = config_from_dict(Config, ckpt["config"], "vocoder checkpoint")
    return _build(cfg, ckpt["model"], "vocoder checkpoint")


def _build(cfg: Config, state: dict, what: str) -> Generator:
    model = Generator(cfg)
    if not any(".parametrizations." in k for k in state):
        remove_weight_norm(model)             # a state_dict saved after remove_weight_norm: plain weights
    try:
        model.load_state_dict(state)
    except RuntimeError as e:                 # missing/unexpected keys or shape mismatches
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise UserError(f"the {what} does not fit a HiFiGAN generator of its config ({first[:200]}).") from None
    return remove_weight_norm(model).eval()


def load_vocoder(path_or_dict, config=None) -> Generator:
    """A ready-to-run generator (eval mode, weight norm removed) from any of the checkpoints we know.

    - our own: {"stage": "vocoder", "config": ..., "model": state_dict} (what Trainer.checkpoint writes);
    - the official: {"generator": state_dict} with weight_g / weight_v names (generator_v1, _v2, _v3 of
      the HiFiGAN repository, or a state_dict already stripped of weight norm).
    `config`: None infers it (ours: stored; official: v1/v2/v3 from the tensor shapes), or "v1" | "v2" |
    "v3" | a Config, which must then agree with the checkpoint (else a UserError naming the mismatch).
    """
    ckpt = load_checkpoint(path_or_dict) if isinstance(path_or_dict, str) else path_or_dict
    what = f"vocoder checkpoint {path_or_dict}" if isinstance(path_or_dict, str) else "vocoder checkpoint"
    cfg = _resolve(config)
    if not isinstance(ckpt, dict):
        raise UserError(f"the {what} is not a checkpoint dict.")
    if ckpt.get("stage") == "vocoder":
        if cfg is not None:
            saved = {k: v for k, v in ckpt["config"].items() if k in GENERATOR_FIELDS}
            check_config(_generator_view(cfg), saved, what)
        return from_checkpoint(ckpt)
    if "stage" in ckpt:
        raise UserError(f"the {what} is a {ckpt['stage']} checkpoint, not a vocoder one.")
    state = ckpt.get("generator", ckpt)       # the official format, or a bare state_dict
    if not isinstance(state, dict) or "conv_pre.bias" not in state:
        raise UserError(f"the {what} holds neither our format nor the official HiFiGAN one (key 'generator').")
    state = from_official_names(state)
    if cfg is None:
        _, cfg = infer_config(state)
    else:
        check_config(cfg, infer_generator_fields(state), what, only_saved_fields=True)   # its tensor shapes
    return _build(cfg, state, what)


@dataclass
class _GeneratorFields:
    """The generator part of a Config, for comparing with check_config (the rest does not matter to inference)."""
    resblock: str
    upsample_rates: tuple
    upsample_kernel_sizes: tuple
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple
    resblock_dilation_sizes: tuple
    n_mels: int


def _generator_view(cfg: Config) -> _GeneratorFields:
    return _GeneratorFields(**{k: getattr(cfg, k) for k in GENERATOR_FIELDS})


# ---------------------------------------------------------------------------------------------------
# Inference: weight norm folded, then the generator under autocast.
# ---------------------------------------------------------------------------------------------------

def remove_weight_norm(generator: Generator) -> Generator:
    """Fold every g * v / ||v|| into one plain weight (for inference: no recomputation per call).

    The folded weight is exactly the tensor the weight-normed forward computes, so outputs do not change.
    Afterwards the module has plain `weight` parameters and cannot be trained as HiFiGAN is.
    """
    for m in generator.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return generator


def has_weight_norm(generator: Generator) -> bool:
    return parametrize.is_parametrized(generator.conv_pre, "weight")
