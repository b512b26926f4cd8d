"""The `distill` command: parse → config → pipeline → print. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill.errors import DistillError

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"

DESCRIPTION = """\
Distil a trained, frozen teacher network into a tensor-network student.

  distill run                       train a small MLP teacher on the bundled 8x8 digits and
                                    distil it into an MPS student (under a minute on a laptop CPU)
  distill run configs/fashion_mps.yaml
  distill run CONFIG --set student.bond_dim=16 --set distill.epochs=5 --out runs/chi16
  distill teacher CONFIG            train and save only the teacher; reuse it with
                                    --set teacher.checkpoint=RUN/teacher
  distill run configs/layerwise_digits.yaml
                                    replace each hidden layer by a TT layer, fit it to the
                                    teacher's activations, then fine-tune end to end
  distill compare-maps configs/compare_maps_digits.yaml
                                    the same student with several feature maps, over seeds
  distill sweep configs/sweep_digits.yaml
                                    student families × sizes × seeds from one teacher, with the
                                    dense and low-rank baselines: table, Pareto front, statistics
  distill check-map fourier --param order=2
                                    is a feature map valid (independent components/derivatives)?
  distill import-teacher model.onnx --data fashion_mnist --out runs/my-teacher
                                    bring a network trained elsewhere in (PyTorch state_dict + arch,
                                    ONNX, Keras); then --set teacher.checkpoint=runs/my-teacher
  distill evaluate RUN · distill predict RUN x.npy --out logits.npy · distill export RUN --format onnx
                                    use a trained student
  distill run --resume RUN          continue a run that was stopped (SIGTERM, Ctrl-C) or killed
  distill analyze RUN               entanglement per bond, accuracy after truncation, the teacher's
                                    weights as TT-matrices: RUN/analysis

Each run writes one folder: config.yaml (the resolved config), results.json, report.md,
training_curves.png and the teacher/ and student/ checkpoints.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that may end its help with text made only when the help is shown
    (`help_tail`): the config keys' listing imports every student family (jax, flax), too slow
    to build for every command."""

    help_tail = None

    def format_help(self) -> str:
        text = super().format_help()
        return text if self.help_tail is None else f"{text}\n{self.help_tail()}\n"


def _config_keys() -> str:
    from distill.config import keys_text

    return keys_text(width=min(100, max(60, _terminal_width())))


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size().columns - 2


def _common(p: argparse.ArgumentParser, config_help: str) -> None:
    p.help_tail = _config_keys
    p.add_argument("config", nargs="?", metavar="CONFIG", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value with a dotted key, e.g. --set student.bond_dim=16 "
                        "or --set teacher.hidden=[256,256]; repeatable; values are read as YAML")
    p.add_argument("--out", metavar="DIR", help="run folder to create (must not exist or be empty); "
                                                 "default: runs/<date>-<time>-<name>")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="a multi-host run: the address of process 0, the "
                   "same on every host (jax.distributed.initialize; or set DISTILL_COORDINATOR); every process runs "
                   "the same command and process 0 writes the run folder (on a file system all hosts share)")
    p.add_argument("--num-processes", type=int, metavar="N", help="a multi-host run: how many processes in all")
    p.add_argument("--process-id", type=int, metavar="I", help="a multi-host run: this process's index, 0..N-1")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distill", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_run = sub.add_parser(
        "run", help="train (or load) a teacher and distil it into a student end to end",
        description="Train the teacher the config describes (or load teacher.checkpoint), train the student "
                    "through the phases of distill.mode (by default KD on the teacher's logits: "
                    "τ = distill.temperature, α = distill.alpha; also layer-wise fits to the teacher's "
                    "activations, or the labels alone as the control), keep the best student by validation "
                    "accuracy, and report test accuracy, agreement and KL to the teacher, parameters, "
                    "compression ratio and latency.")
    _common(p_run, f"experiment YAML file (default: {QUICKSTART.relative_to(QUICKSTART.parents[1])}, "
                   "the digits quickstart)")
    p_run.add_argument("--resume", metavar="DIR", help="continue the run whose --out was DIR after it was stopped "
                       "(SIGTERM, Ctrl-C) or killed: the teacher is reused, finished phases are skipped, the "
                       "results equal an uninterrupted run's")
    p_teacher = sub.add_parser(
        "teacher", help="train and save only the teacher",
        description="Train the teacher described by CONFIG and save it as <out>/teacher (orbax checkpoint "
                    "plus teacher.json). Point a later run at it with --set teacher.checkpoint=<out>/teacher.")
    _common(p_teacher, "experiment YAML file (its data and teacher sections are used)")
    p_cmp = sub.add_parser(
        "compare-maps", help="the same MPS student with each feature map in compare.maps, over compare.seeds",
        description="Train (or load) one teacher, then distil the same MPS student with every feature map in "
                    "compare.maps for every seed in compare.seeds at an equal budget (compare.budget: equal "
                    "parameters, or equal d·χ²). student.family picks the variant: mps (one MPS from pixels to "
                    "logits, distill.mode end_to_end) or mps_layers (every hidden layer replaced by an MPS layer "
                    "with the map; distill.mode layerwise, staged or end_to_end; per-layer R² recorded). Writes "
                    "results.json, results.csv, report.md (mean ± std, and which differences exceed the seed "
                    "spread) and compare_maps.png.")
    _common(p_cmp, "experiment YAML with a compare section, e.g. configs/compare_maps_digits.yaml")
    p_cmp.add_argument("--resume", metavar="DIR", help="continue the comparison whose --out was DIR after it was "
                       "stopped or killed; finished (map, seed) runs are not repeated")
    p_sweep = sub.add_parser(
        "sweep", help="student families × sizes × seeds from one teacher, with the baselines",
        description="Train (or load) one teacher, then distil every point of sweep.families — a mirror family at "
                    "one size (sweep.families[i].sizes, or the size matched to each budget level of "
                    "sweep.compression) — for every seed in sweep.seeds, all as the distill section says; the "
                    "baselines dense and lowrank are always included at every budget level. Writes results.csv "
                    "(one row per run), results.json, report.md (accuracy with 95 % t-intervals, compression, "
                    "latency, lossless flags, Holm-corrected Welch tests against the baselines) and pareto.png.")
    _common(p_sweep, "experiment YAML with a sweep section, e.g. configs/sweep_digits.yaml")
    p_sweep.add_argument("--resume", metavar="DIR", help="continue the sweep whose --out was DIR after it was "
                         "stopped or killed; finished (point, seed) runs are read back, not repeated")
    p_imp = sub.add_parser(
        "import-teacher", help="bring a network trained elsewhere in as a teacher checkpoint",
        description="Read a trained network — a PyTorch nn.Sequential state_dict (.safetensors or .npz, with --arch "
                    "ARCH.yaml listing its modules), an ONNX file, a Keras 3 .keras file, or a distill teacher "
                    "folder — measure its accuracy on the dataset's test split, and write a teacher checkpoint "
                    "folder for teacher.checkpoint. ONNX graphs that are plain chains of supported operations "
                    "become native JAX teachers; any other graph runs as a black box through onnxruntime "
                    "(only student.family mps can learn from it). Pickle files (.pt, .pth, .pkl, .ckpt) are "
                    "refused.")
    p_imp.add_argument("source", metavar="SOURCE", help="the trained network: .safetensors/.npz (+ --arch), .onnx, "
                       ".keras, or a teacher folder")
    p_imp.add_argument("--data", required=True, metavar="NAME", help="the dataset it was trained on: digits, "
                       "fashion_mnist, mnist or tfds:<name> (its test split measures the imported teacher)")
    p_imp.add_argument("--arch", metavar="ARCH.yaml", help="PyTorch state_dicts only: `layers:` mirroring the "
                       "nn.Sequential (e.g. '- Linear: [784, 300]', '- ReLU') and an optional `input:` block "
                       "(channels, height, width, mean, std)")
    p_imp.add_argument("--data-dir", metavar="DIR", help="folder of the dataset's files (default: its usual place)")
    p_imp.add_argument("--downsample", type=int, default=1, metavar="K",
                       help="the network reads k×k average-pooled images (default 1: full size)")
    p_imp.add_argument("--out", metavar="DIR", help="teacher folder to create (default: runs/<source name>-teacher)")

    p_eval = sub.add_parser(
        "evaluate", help="a trained student's accuracy, agreement and KL on a test split",
        description="Load the student of RUN_DIR and measure its test accuracy on the run's dataset (or --data), "
                    "and its agreement and KL(teacher ‖ student) with the run's teacher.")
    p_eval.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `distill run`")
    p_eval.add_argument("--data", metavar="NAME", help="another dataset of the same image size")
    p_eval.add_argument("--data-dir", metavar="DIR", help="folder of that dataset's files")
    p_eval.add_argument("--json", action="store_true", help="print the figures as JSON")

    p_pred = sub.add_parser(
        "predict", help="logits of a trained student for new images",
        description="Load the student of RUN_DIR and write its logits for the images in INPUT.npy — (N, H, W) or "
                    "(N, H*W), pixels in [0, 1], at the run dataset's size — to OUT.npy.")
    p_pred.add_argument("run_dir", metavar="RUN_DIR")
    p_pred.add_argument("inputs", metavar="INPUT.npy")
    p_pred.add_argument("--out", required=True, metavar="OUT.npy", help="where to write the logits (N, classes)")

    p_exp = sub.add_parser(
        "export", help="write a trained student as safetensors or ONNX",
        description="safetensors: every array of the student with its spec in the metadata. onnx: the whole "
                    "inference function (pooling included, raw pixels in [0, 1] → logits, dynamic batch) through "
                    "jax2onnx, checked against JAX with onnxruntime before it is written.")
    p_exp.add_argument("run_dir", metavar="RUN_DIR")
    p_exp.add_argument("--format", required=True, choices=["safetensors", "onnx"])
    p_exp.add_argument("--out", metavar="FILE", help="default: RUN_DIR/student.<format>")

    p_an = sub.add_parser(
        "analyze", help="look inside a trained student and its teacher: entanglement, truncation, TT ranks",
        description="Read RUN_DIR (unchanged) and write RUN_DIR/analysis (or --out): analysis.json, analysis.md and "
                    "PNGs with the student's Schmidt spectrum and entanglement entropy (nats) per bond; its test "
                    "accuracy after SVD truncation to each bond dimension χ′, without and with a short KD fine-tune "
                    "(MPS students); the teacher's dense weights read as TT-matrices — entanglement across every cut "
                    "for the neuron orderings row-major, snake, Hilbert, random and data-driven, the TT ranks a "
                    "relative error ε needs, and the teacher's accuracy at each TT rank; and the smallest χ′ / rank "
                    "that reaches a target accuracy.")
    p_an.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `distill run`")
    p_an.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/analysis; replaced if it exists)")
    p_an.add_argument("--chi", metavar="LIST", help="bond dimensions χ′ of the truncation curve, comma-separated "
                      "(default: about χ·(1, ¾, ½, ⅓, ¼, ⅛), 2, 1)")
    p_an.add_argument("--finetune-epochs", type=int, default=1, metavar="N",
                      help="KD epochs after each truncation (default 1; 0: none)")
    p_an.add_argument("--target-accuracy", type=float, metavar="A",
                      help="accuracy (fraction) the suggested χ′ and TT rank must reach (default: 1 point below the "
                           "student's / the teacher's own)")
    p_an.add_argument("--tt-cores", type=int, default=4, metavar="D", help="cores of the teacher's TT-matrices "
                      "(default 4)")
    p_an.add_argument("--no-teacher", action="store_true", help="skip the teacher's weights")
    p_an.add_argument("--quiet", action="store_true", help="no progress bars")

    p_chk = sub.add_parser(
        "check-map", help="is a feature map valid: are its components and their derivatives linearly independent?",
        description="Check that a feature map's components, and their derivatives, are linearly independent on "
                    "[0, 1] (pairwise maps: on [0, 1]²); prints the singular values. Exit status 0 if the map is "
                    "valid, 1 if it is refused.")
    p_chk.add_argument("name", metavar="NAME", help="a registered feature map, e.g. trig, poly, fourier, pair_product")
    p_chk.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter of the map, e.g. --param degree=3; repeatable")
    p_chk.add_argument("--pairing", choices=["neighbour", "random"], help="pairing, for pairwise maps")
    p_chk.add_argument("--pair-shift", type=float, help="input shift for pairwise maps (default 1.0)")
    return parser


def _load(args: argparse.Namespace):
    from distill.config import load_config

    path = args.config
    if path is None:
        # The quickstart file spells out the built-in defaults (a test keeps them equal), so an
        # installed copy without the configs/ folder still runs the same experiment.
        path = QUICKSTART if QUICKSTART.is_file() else None
    return load_config(path, args.overrides)


def _steady_malloc() -> None:
    """Keep glibc from handing XLA's multi-MB per-call buffers back to the OS and mapping them
    afresh (page faults on every call made latencies bimodal across processes; docs/bench/speed_ii.md):
    raise the mmap and trim thresholds. Linux/glibc only; elsewhere nothing happens."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    _steady_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except DistillError as err:
        print(f"distill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; no run folder was written", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug, or a bad input no check anticipated: one line, not a trace
        if os.environ.get("DISTILL_DEBUG"):
            raise
        first = str(err).splitlines()[0][:300] if str(err) else ""
        print(f"distill: internal error: {type(err).__name__}: {first} (nothing was written; rerun with "
              "DISTILL_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-map":
        from distill.config import parse_override
        from distill.experiments import compare_maps as compare

        r = compare.check_map(args.name, dict(parse_override(t, "--param", "order=2") for t in args.params),
                              pairing=args.pairing, pair_shift=args.pair_shift)
        print(compare.format_validity(r))
        return 0 if r.ok else 1
    if args.command in ("import-teacher", "evaluate", "predict", "export"):
        return _use(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command in ("run", "teacher", "compare-maps"):  # a multi-host run, if flags or DISTILL_* say so
        from distill.train.sharding import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.command in ("run", "compare-maps") and args.resume is not None:
        if args.config is not None or args.overrides or args.out is not None:
            raise DistillError("--resume continues a run with the config it recorded; give no CONFIG, --set or --out")
        from distill import report
        from distill.experiments import run as pipeline
        from distill.train.checkpoint import RunInterrupted

        try:
            if args.command == "run":
                cfg, folder, results = pipeline.resume(args.resume, progress=not args.quiet)
                print(f"\n{cfg.name}: teacher vs student on the test split\n")
                print(report.console_table(results))
            else:
                from distill.config import load_config
                from distill.experiments import compare_maps as compare
                from distill.experiments.folder import RunFolder

                cfg = load_config(RunFolder.staged_config(args.resume))
                folder, results = compare.compare_maps(cfg, args.resume, progress=not args.quiet, resume=True)
                print(f"\n{cfg.name}: mean ± std over seeds {list(cfg.compare.seeds)} (test split)\n")
                print(compare.console_table(results))
        except RunInterrupted as err:
            return _interrupted(err, args.resume, command=args.command)
        print(f"\nrun folder: {folder}")
        return 0
    cfg = _load(args)
    from distill import report  # heavy imports (jax, flax) only once the config is valid
    from distill.experiments import run as pipeline
    from distill.train.checkpoint import RunInterrupted

    if args.command == "run":
        out = args.out if args.out is not None else str(pipeline.default_run_dir(cfg.name))
        try:
            folder, results = pipeline.run(cfg, out, progress=not args.quiet)
        except RunInterrupted as err:
            return _interrupted(err, out)
        print(f"\n{cfg.name}: teacher vs student on the test split\n")
        print(report.console_table(results))
    elif args.command == "compare-maps":
        from distill.experiments import compare_maps as compare

        out = args.out if args.out is not None else str(pipeline.default_run_dir(cfg.name, "-compare-maps"))
        try:
            folder, results = compare.compare_maps(cfg, out, progress=not args.quiet)
        except RunInterrupted as err:
            return _interrupted(err, out, command="compare-maps")
        print(f"\n{cfg.name}: mean ± std over seeds {list(cfg.compare.seeds)} (test split)\n")
        print(compare.console_table(results))
    else:
        folder, results = pipeline.train_teacher(cfg, args.out, progress=not args.quiet)
        print(f"\nteacher test accuracy {100 * results['teacher']['accuracy']:.2f} %, "
              f"{results['teacher']['params']:,} parameters")
        print(f"reuse it with: --set teacher.checkpoint={folder / 'teacher'}")
    print(f"\nrun folder: {folder}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """`distill sweep CONFIG` and `distill sweep --resume DIR` (one process: its runs are small and
    many; a multi-host run is refused)."""
    from distill.config import load_config

    if args.coordinator or args.num_processes is not None or args.process_id is not None or any(
            os.environ.get(k) for k in ("DISTILL_COORDINATOR", "DISTILL_NUM_PROCESSES", "DISTILL_PROCESS_ID")):
        raise DistillError("distill sweep runs in one process (its runs are many and small); drop --coordinator / "
                           "--num-processes / --process-id and the DISTILL_* variables (runtime.devices still spreads "
                           "each run over this host's devices)")

    if args.resume is not None:
        if args.config is not None or args.overrides or args.out is not None:
            raise DistillError("--resume continues a sweep with the config it recorded; give no CONFIG, --set or --out")
        from distill.experiments.folder import RunFolder

        cfg, out, resume = load_config(RunFolder.staged_config(args.resume)), args.resume, True
    else:
        cfg, resume = _load(args), False
        out = None
    from distill.experiments import sweep as sweep_lib
    from distill.experiments.folder import default_run_dir
    from distill.train.checkpoint import RunInterrupted

    out = out if out is not None else (args.out if args.out is not None else str(default_run_dir(cfg.name, "-sweep")))
    try:
        folder, results = sweep_lib.sweep(cfg, out, progress=not args.quiet, resume=resume)
    except RunInterrupted as err:
        return _interrupted(err, out, command="sweep")
    print(f"\n{cfg.name}: families × sizes over seeds {list(cfg.sweep.seeds)} (test split)\n")
    print(sweep_lib.console_table(results))
    print(f"\nrun folder: {folder}")
    return 0


def _use(args: argparse.Namespace) -> int:
    from distill.experiments import use

    if args.command == "import-teacher":
        folder, info = use.import_teacher(args.source, args.data, arch=args.arch, data_dir=args.data_dir,
                                          downsample_by=args.downsample, out=args.out)
        for note in info["notes"]:
            print(f"note: {note}")
        kind = "black-box teacher (onnxruntime)" if info["black_box"] else f"{info['params']:,} parameters"
        print(f"imported {args.source} ({info['format']}, {kind}): test accuracy on {args.data} "
              f"{100 * info['accuracy']:.2f} %")
        if info["layer_names"]:
            print(f"layers: {', '.join(info['layer_names'])}")
        print(f"teacher folder: {folder}\nuse it with: --set teacher.checkpoint={folder}")
    elif args.command == "evaluate":
        r = use.evaluate(args.run_dir, args.data, args.data_dir)
        if args.json:
            import json

            print(json.dumps(r, indent=2))
        else:
            print(f"{r['dataset']} test split ({r['n_test']} images):")
            print(f"  student accuracy        {100 * r['accuracy']:.2f} %")
            if r["agreement"] is not None:
                print(f"  teacher accuracy        {100 * r['teacher_accuracy']:.2f} %")
                print(f"  agreement with teacher  {100 * r['agreement']:.2f} %")
                print(f"  KL(teacher ‖ student)   {r['kl']:.4f} nats")
    elif args.command == "predict":
        logits = use.predict(args.run_dir, args.inputs, args.out)
        print(f"wrote logits {logits.shape} to {args.out}")
    else:
        path = use.export(args.run_dir, args.format, args.out)
        print(f"wrote {path}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from distill.experiments import analyze

    chis = None
    if args.chi is not None:
        try:
            chis = [int(v) for v in args.chi.split(",") if v.strip()]
        except ValueError:
            raise DistillError(f"--chi {args.chi!r}: expected comma-separated integers, e.g. --chi 2,4,8") from None
    folder, r = analyze.analyze(args.run_dir, out=args.out, chis=chis, finetune_epochs=args.finetune_epochs,
                                target_accuracy=args.target_accuracy, tt_cores=args.tt_cores,
                                teacher_part=not args.no_teacher, progress=not args.quiet)
    s = r["student"]
    print(f"student ({s['family']}): {s['params']:,} parameters, test accuracy {100 * s['accuracy']:.2f} %")
    if r["bonds"]:
        print(f"  entanglement: mean {s['mean_entropy']:.3f} nats, max "
              f"{max(b['entropy'] for b in r['bonds']):.3f} nats over {len(r['bonds'])} bonds; exact at its Schmidt "
              f"ranks with {s['exact_params']:,} parameters")
    for t in r["truncation"]:
        tuned = "" if t["accuracy_finetuned"] is None else f", fine-tuned {100 * t['accuracy_finetuned']:.2f} %"
        print(f"  χ′ = {t['chi']:>3}: {t['params']:>8,} parameters, {100 * t['accuracy']:.2f} %{tuned}")
    for key, what, size in (("student", "χ′", "chi"), ("teacher_tt", "teacher TT rank", "rank")):
        sug = r["suggested"].get(key)
        if sug is not None:
            got = "none reaches it" if sug.get(size) is None else f"{sug[size]} ({sug['params']:,} parameters)"
            print(f"  suggested {what} for {100 * sug['target_accuracy']:.2f} %: {got}")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"analysis folder: {folder}")
    return 0


def _interrupted(err, out: str, command: str = "run") -> int:
    print(f"distill: {err.signal_name} received: checkpoint saved; continue with `distill {command} --resume {out}`",
          file=sys.stderr)
    return 143 if err.signal_name == "SIGTERM" else 130


if __name__ == "__main__":
    sys.exit(main())
