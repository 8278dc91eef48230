"""The `lscjax` command."""

import argparse
import subprocess
import sys
from pathlib import Path

from lscjax._src.errors import LscError


def _demo(args) -> None:
    from lscjax._src.demo import run_demo

    run_demo(
        model=args.model,
        recipe_name=args.recipe,
        epochs=args.epochs,
        retrain_epochs=args.retrain_epochs,
        sparsity=args.sparsity,
        data=args.data,
        out=args.out,
        quiet=args.quiet,
    )


def _compress(args) -> None:
    from lscjax._src.checkpoints import read_params
    from lscjax._src.compress import compress, recipe
    from lscjax._src.compressed import save
    from lscjax._src.report import format_storage_report, storage_report
    from lscjax._src.streaming import compress_file, streams

    changes = {
        k: v
        for k, v in (
            ("sparsity", args.sparsity),
            ("bits", args.bits),
            ("format", args.format),
            ("entropy", args.entropy),
        )
        if v is not None
    }
    rc = recipe(args.recipe, **changes)
    if streams(args.input):
        model = compress_file(args.input, args.output, rc, workers=args.workers)
        size = Path(args.output).stat().st_size
    else:
        model = compress(read_params(args.input), rc, progress=not args.quiet)
        size = save(args.output, model)
    print(format_storage_report(storage_report(model, file_bytes=size)))
    print(f"wrote {args.output}")


def _report(args) -> None:
    import json

    from lscjax._src.compressed import load
    from lscjax._src.report import format_storage_report, plot_storage, storage_report

    model = load(args.file, layout="model")
    report = storage_report(model, file_bytes=Path(args.file).stat().st_size)
    if args.plot:
        plot_storage(report, args.plot)
    if args.json:
        print(json.dumps({"file": str(args.file), "meta": model.meta, **report}, indent=1))
    else:
        print(format_storage_report(report))
        if args.plot:
            print(f"plot: {args.plot}")


def _bench(args) -> None:
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    scripts = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not scripts:
        raise LscError(f"no benchmarks found in {folder} (run from a source checkout)")
    for script in scripts:
        if args.only and script.stem not in args.only:
            continue
        print(f"== {script.name}", flush=True)
        subprocess.run(
            [sys.executable, str(script), *(["--quick"] if args.quick else [])], check=True
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lscjax", description="Compress Flax models into small files and serve them."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", parents=[common], help="the main job on the embedded Fashion-MNIST subset"
    )
    demo.add_argument("--model", default="lenet5", choices=["lenet5", "lenet300"])
    demo.add_argument("--recipe", default="lsc", choices=["lsc", "deep_compression"])
    demo.add_argument("--epochs", type=float, default=4, help="dense training epochs")
    demo.add_argument("--retrain-epochs", type=float, default=2, help="epochs per retraining stage")
    demo.add_argument(
        "--sparsity", type=float, help="overall weight sparsity (default: the recipe's)"
    )
    demo.add_argument(
        "--data",
        default=None,
        help="folder with Fashion-MNIST IDX files (default: embedded subset)",
    )
    demo.add_argument("--out", default=None, help="where to write the compressed file")
    demo.set_defaults(run=_demo)

    comp = sub.add_parser(
        "compress",
        parents=[common],
        help="compress a checkpoint (.npz, .safetensors or its index/folder, .msgpack, orbax)",
    )
    comp.add_argument("input", help="checkpoint file or orbax folder")
    comp.add_argument("-o", "--output", required=True, help="the .lsc file to write")
    comp.add_argument("--recipe", default="lsc", choices=["lsc", "deep_compression"])
    comp.add_argument("--sparsity", type=float, help="overall sparsity (default: the recipe's)")
    comp.add_argument("--bits", type=int, help="code bits for every layer (0: float32 values)")
    comp.add_argument("--format", help="index format (lsc, ri, sri, csr, ...)")
    comp.add_argument("--entropy", choices=["ans", "huffman", "none"])
    comp.add_argument(
        "--workers",
        type=int,
        help="threads encoding tensors in parallel (safetensors input; default: every core)",
    )
    comp.set_defaults(run=_compress)

    rep = sub.add_parser("report", parents=[common], help="per-layer storage of an .lsc file")
    rep.add_argument("file")
    rep.add_argument("--plot", help="write per-layer stacked bars to this PNG")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.set_defaults(run=_report)

    bench = sub.add_parser("bench", parents=[common], help="run the benchmarks (source checkout)")
    bench.add_argument("--quick", action="store_true", help="small sizes")
    bench.add_argument("--only", nargs="*", help="benchmark names, e.g. codecs matmul")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None) -> int:
    """Entry point of the `lscjax` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LscError, OSError, subprocess.CalledProcessError) as err:
        print(f"lscjax {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
