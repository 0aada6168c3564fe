"""
evaluate.py — the paper's evaluation in miniature: FAD, CLAP score, three judges, and the ablations.

Paper: "SpecMaskGIT: Masked Generative Modeling of Audio Spectrograms ..." (ISMIR 2024).
  Sec. 4     every table scores audio with the Fréchet audio distance (FAD, Kilgour et al. 2019):
             the distance between two Gaussians fitted to embeddings of generated and real clips
  Table 1    text-to-audio FAD, and the same without CFG (the conditional logits alone) and without
             the CFG scale's linear ramp
  Fig. 7     FAD vs the Gumbel temperature (left) and vs the number of MaskGIT iterations (right)
  Table 7    zero-shot time inpainting and bandwidth extension (BWE, with and without low-frequency
             replacement), scored against the unprocessed (gapped / low-passed) input
  Table 3    reconstruction FAD of the vocoder and of the codec, and the latent rate
  Table 8    the linear probe: tagging from frozen features
  Fig. 8     FAD against training steps and the early stop

Everything runs on the toy sound world of data/toyworld.py, with the small bundled model:
  - the embedding for FAD is pluggable. The paper uses VGGish (the toolbox of its ref. [41]); we have
    no VGGish here, so by default the audio tower of the bundle's TinyCLAP embeds the clips (it was
    trained on exactly this world), and a LAION-CLAP checkpoint can be given instead. FAD values are
    therefore on another scale than the paper's: compare the *shape* of the curves, not the numbers;
  - the reference set is held-out toy clips (ToyDataset("test")); the prompts are their captions;
  - three judges say whether "a dog barking" came out as a dog: TinyCLAP zero-shot (the kind whose name
    is nearest in the CLAP space), a nearest-centroid classifier on statistics of the model's mel, and
    a pitch-and-MFCC judge that uses neither (5 nearest neighbours on MFCCs, a pitch track, zero
    crossings and the loudness's rhythm, computed from the samples up to 8 kHz; evaluation/judges.py). On real toy
    clips the same judges give the ceiling.

In:  a bundle written by train.py --bundle (default: sample.py's, checkpoints/toy.pt)
Out: markdown tables on stdout (copy them into RESULTS.md)
  python evaluate.py --quick            # everything, small sets
  python evaluate.py --judges           # only the three judges, 12 kinds x 8 clips
  python evaluate.py --judges --condition audio --steps 8   # the generated set sampled otherwise
  python evaluate.py --ablations --n 64 # only the FAD tables, 64 clips per set

This file is the command: its flags, and the order the tables run in. Each evaluation lives in evaluation/:
  clips.py           the sets of clips every table scores (generated, vocoder and codec round trips), the FAD
                     embedding, the markdown table
  judges.py          the three judges (--judges)
  ablations.py       Table 1, Fig. 7 and Table 7 (--ablations), and text-to-audio FAD alone (--fad)
  magnet_table.py    MAGNeT's ideas against SpecMaskGIT's sampler (--magnet)
  probe.py           Table 8, the linear probe (--probe)
  reconstruction.py  Table 3, reconstruction FAD, and IS and FID in miniature (--reconstruction)
  curve.py           Fig. 8, FAD against training steps (--curve)
  evaluation/metrics.py         FAD, CLAP score, ROC-AUC, mAP and IS themselves
"""

import sys
import time

import torch

import pipeline
from data import toyworld
from evaluation import ablations, clips, curve, judges, magnet_table, probe, reconstruction
from ground.runtime import ArgumentParser, UserError, pick_device, run_command


# ---------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------

MAX_SEED = 2 ** 62   # torch's generators take seeds below 2**63; the clip sets add their index to the seed


def parse_args(argv=None):
    p = ArgumentParser(description="SpecMaskGIT's evaluation in miniature on the toy world: FAD tables and the three "
                                   "judges.")
    p.add_argument("--ckpt", default=pipeline.DEFAULT_CKPT, help="a bundle written by train.py --bundle")
    p.add_argument("--quick", action="store_true", help="small sets (everything, quickly)")
    p.add_argument("--judges", action="store_true", help="run the three judges (default: judges and ablations)")
    p.add_argument("--ablations", action="store_true", help="run the FAD tables (default: judges and ablations)")
    p.add_argument("--n", type=int, default=None, help="clips per FAD set (default 48, --quick 16)")
    p.add_argument("--per-kind", type=int, default=None, help="generated clips per kind for the judges (default 8, --quick 4)")
    p.add_argument("--seed", type=int, default=0, help="the generated clips' draws and the toy sets' clips")
    p.add_argument("--magnet", action="store_true", help="the MAGNeT table (magnet.py); with --ablations after the FAD tables")
    p.add_argument("--magnet-ckpt", default=None,
                   help="with --magnet: a span-masked transformer (train.py --transformer.span_len 3) for its rows")
    p.add_argument("--magnet-trained-ckpt", default=None,
                   help="with --magnet: a transformer trained as MAGNeT trains (train.py --transformer.by_row true ...) "
                        "for its rows")
    p.add_argument("--cfg", type=float, default=3.0, help="the judges' generated and refilled clips: the final "
                   "guidance scale, which the ramp rises to (Eq. 2; the paper's 3)")
    p.add_argument("--steps", type=int, default=16, help="the judges' generated clips: MaskGIT iterations (Sec. 3.4)")
    p.add_argument("--temperature", type=float, default=1.5, help="the judges' generated clips: the initial Gumbel "
                   "temperature (Eq. 3)")
    p.add_argument("--condition", default="text", choices=list(judges.CONDITIONS), help="the judges' generated clips: "
                   "from each kind's name, or from the CLAP audio embedding of a real clip of the kind (what the "
                   "transformer was trained on)")
    p.add_argument("--no-cfg-ramp", action="store_true", help="the judges' clips with the CFG scale at --cfg from the "
                   "first step (Table 1's 'w/o CFG linear scheduler') instead of the paper's ramp")
    p.add_argument("--fad-clap-ckpt", default=None, help="LAION-CLAP 630k-audioset-best.pt to embed audio for FAD "
                                                        "instead of the bundle's TinyCLAP")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    p.add_argument("--dtype", default="fp32", help="fp32 (RESULTS.md's numbers) | auto | bf16 | fp16 | int8: "
                   "judge the fast path of sample.py")
    p.add_argument("--probe", action="store_true", help="Table 8: the linear probe (multi-label tagging) on frozen "
                   "features of the transformer, untrained or trained, TinyCLAP, the VQGAN and log-mel statistics")
    p.add_argument("--probe-data", default=None, metavar="DIR", help="--probe on a folder of audio instead of the "
                   "toy world (e.g. MagnaTagATune converted to wav), with --probe-labels")
    p.add_argument("--probe-labels", default=None, metavar="CSV", help="the tags of --probe-data: a header, a file "
                   "column (path, file, filename or mp3_path), optional split (train/test), 0/1 tag columns")
    p.add_argument("--probe-n", type=int, default=None, help="toy clips to train the probe on (default 600, --quick "
                   "96); half as many test clips")
    p.add_argument("--probe-seeds", type=int, default=probe.PROBE_SEEDS, help="probe seeds to measure the noise over")
    p.add_argument("--reconstruction", action="store_true", help="Table 3: FAD of the vocoder alone and of the "
                   "codec + vocoder, the latent rate, and beside FAD an IS and a Fréchet distance of log-mel statistics in the "
                   "manner of Zou, Gong and Gao's MaskGIT-on-SpecVQGAN report (not comparable with its Inception-based numbers)")
    p.add_argument("--fad", action="store_true", help="only text-to-audio FAD and CLAP score against --n test clips "
                   "(with --toy-mix: of a shifted world, Table 4 in miniature)")
    p.add_argument("--toy-mix", type=float, default=toyworld.P_MIX, help="--fad: the toy world's share of two-sound clips")
    p.add_argument("--curve", default=None, metavar="RUN_DIR", help="Fig. 8: FAD against training steps from a run "
                   "trained with --eval-every (a PNG, and the early-stop step); loads no model")
    p.add_argument("--curve-out", default=None, help="--curve's PNG (default RUN_DIR/fad_curve.png)")
    args = p.parse_args(argv)
    args.n = args.n if args.n is not None else (16 if args.quick else 48)
    args.per_kind = args.per_kind if args.per_kind is not None else (4 if args.quick else 8)
    if not 2 <= args.n <= 1000:
        raise UserError(f"--n must be between 2 and 1000 (FAD needs a covariance of at least 2 clips), not {args.n}.")
    if not 1 <= args.per_kind <= 100:
        raise UserError(f"--per-kind must be between 1 and 100, not {args.per_kind}.")
    if not 0 <= args.cfg <= pipeline.MAX_CFG:
        raise UserError(f"--cfg must be between 0 (no guidance) and {pipeline.MAX_CFG:g} (the paper uses 3), "
                        f"not {args.cfg}.")
    if not 1 <= args.steps <= pipeline.MAX_STEPS:
        raise UserError(f"--steps must be between 1 and {pipeline.MAX_STEPS}, not {args.steps}.")
    if not 0 <= args.temperature <= pipeline.MAX_TEMPERATURE:
        raise UserError(f"--temperature must be between 0 and {pipeline.MAX_TEMPERATURE:g} (the paper uses 1.5), "
                        f"not {args.temperature}.")
    if not 0 <= args.seed < MAX_SEED:
        raise UserError(f"--seed must be a whole number from 0 to 2**62 - 1, not {args.seed}.")
    for flag in ("magnet_ckpt", "magnet_trained_ckpt"):
        if getattr(args, flag) and not args.magnet:
            raise UserError(f"--{flag.replace('_', '-')} only makes sense with --magnet.")
    if bool(args.probe_data) != bool(args.probe_labels):
        raise UserError("--probe-data and --probe-labels go together (a folder of audio and its table of tags).")
    args.probe = args.probe or bool(args.probe_data)
    args.probe_n = args.probe_n if args.probe_n is not None else (96 if args.quick else 600)
    if not 8 <= args.probe_n <= 10000:
        raise UserError(f"--probe-n must be between 8 and 10000, not {args.probe_n}.")
    if not 1 <= args.probe_seeds <= 100:
        raise UserError(f"--probe-seeds must be between 1 and 100, not {args.probe_seeds}.")
    if not 0 <= args.toy_mix <= 1:
        raise UserError(f"--toy-mix must be between 0 and 1, not {args.toy_mix}.")
    if args.fad_clap_ckpt:                       # a missing laion-clap, named by the flag that needs it, now
        from formats import clap_format
        clap_format.import_laion_clap("--fad-clap-ckpt")
    if not (args.judges or args.ablations or args.magnet or args.probe or args.reconstruction or args.fad
            or args.curve):
        args.judges = args.ablations = True
    return args


def run(args) -> None:
    if args.curve:                                                              # a log file is all it reads
        curve.run_curve(args.curve, args.curve_out)
        if not (args.judges or args.ablations or args.probe or args.reconstruction or args.fad):
            return
    device = pick_device(args.device)
    if args.device == "auto":                           # say which one auto chose, as train.py's dtype line does
        print(f"device: {device} ({'a CUDA GPU is here' if device == 'cuda' else 'no CUDA GPU here'}; "
              f"--device cpu or cuda to choose)")
    torch.manual_seed(args.seed)
    pipe = pipeline.load_pipeline(args.ckpt, device=device, dtype=args.dtype)
    span_model, trained_model = (pipeline.load_second_transformer(path, pipe, flag) if path else None   # before any work
                                 for path, flag in ((args.magnet_ckpt, "--magnet-ckpt"),
                                                    (args.magnet_trained_ckpt, "--magnet-trained-ckpt")))
    print(f"evaluating {args.ckpt} on the toy world ({pipe.num_samples} samples per clip, seed {args.seed})", flush=True)
    start = time.time()
    if args.judges:
        judges.print_judges(judges.run_judges(pipe, args.per_kind, args.seed, args.steps, args.cfg,
                                              args.temperature, not args.no_cfg_ramp, args.condition),
                            args.per_kind)
    if args.ablations:
        embed, embed_name = clips.make_embedder(pipe, args.fad_clap_ckpt)
        ablations.print_ablations(ablations.run_ablations(pipe, embed, args.n, args.seed, args.quick), embed_name)
    if args.magnet:
        embed, embed_name = clips.make_embedder(pipe, args.fad_clap_ckpt)
        magnet_table.print_magnet_table(
            magnet_table.run_magnet_table(pipe, embed, args.n, args.per_kind, args.seed, span_model, trained_model),
            args.n, args.per_kind, embed_name)
    if args.probe:
        probe.print_probe(probe.run_probe(pipe, args.probe_n, max(4, args.probe_n // 2), range(args.probe_seeds),
                                          args.probe_data, args.probe_labels))
    if args.reconstruction or args.fad:
        embed, embed_name = clips.make_embedder(pipe, args.fad_clap_ckpt)
    if args.reconstruction:
        reconstruction.print_reconstruction(reconstruction.run_reconstruction(pipe, embed, args.n, args.seed),
                                            embed_name)
    if args.fad:
        fad, score = ablations.text_to_audio_fad(pipe, embed, args.n, args.seed, args.toy_mix)
        print(f"\ntext-to-audio on {args.n} test clips of the toy world with {args.toy_mix:.0%} two-sound clips "
              f"({embed_name}): FAD {fad:.4f}, CLAP score {score:.4f}")
    print(f"\n(evaluation took {(time.time() - start) / 60:.1f} min)")


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
