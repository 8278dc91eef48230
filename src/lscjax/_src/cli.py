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


RECIPE_FILE_KEYS = {
    "recipe",
    "where",
    "sparsity",
    "prune",
    "bits",
    "conv_bits",
    "dense_bits",
    "format",
    "entropy",
    "format_options",
    "rules",
    "per_channel",
    "init",
}


def read_recipe_file(path: str | Path) -> dict:
    """The settings of a recipe file (TOML, or JSON for a .json file).

    Top-level keys: "recipe" (the shipped recipe to start from), "where" (a list of regular
    expressions, as ``--where``), any `Recipe` field (sparsity, prune, bits, conv_bits,
    dense_bits, format, entropy, format_options) and "rules": a list of tables with a
    "pattern" and any of sparsity, bits, format, format_options, keep_dense (see
    `lscjax.Rule`). An example: examples/minilm_recipe.toml.

    Raises:
      LscError: a file that does not parse, or an unknown key.
    """
    import json
    import tomllib

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise LscError(f"recipe file {path}: {err}") from None
    if not isinstance(data, dict):
        raise LscError(f"recipe file {path}: expected a table of settings at the top")
    unknown = sorted(set(data) - RECIPE_FILE_KEYS)
    if unknown:
        raise LscError(
            f"recipe file {path}: unknown key(s) {unknown}; expected {sorted(RECIPE_FILE_KEYS)}"
        )
    where = data.get("where", [])
    if isinstance(where, str):
        where = [where]
    if not (isinstance(where, list) and all(isinstance(w, str) for w in where)):
        raise LscError(f"recipe file {path}: 'where' must be a list of regular expressions")
    return data | {"where": where}


def where_regexes(patterns: list[str]):
    """A ``(path, leaf) -> bool`` selection: the leaf path contains a match of any pattern
    (`re.search`; anchor with ^ and $ for a full match)."""
    import re

    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as err:
        raise LscError(f"--where {err.pattern!r}: not a regular expression ({err})") from None
    return lambda path, _: any(c.search(path) for c in compiled)


def _streamed(path: str, rc) -> bool:
    """Whether `lscjax compress` streams the checkpoint (`compress_file`, one tensor at a time):
    a safetensors checkpoint (Flax or PyTorch layout) and a recipe without per-layer rules
    or a global rdq target."""
    from lscjax._src.streaming import streams

    return not rc.rules and rc.quant != "rdq" and streams(path)


def _compress(args) -> None:
    from lscjax._src.checkpoints import read_checkpoint
    from lscjax._src.compress import compress, recipe
    from lscjax._src.compressed import save
    from lscjax._src.report import format_storage_report, storage_report
    from lscjax._src.streaming import compress_file

    settings = read_recipe_file(args.recipe_file) if args.recipe_file else {}
    patterns = args.where or settings.get("where", [])
    flags = {
        "sparsity": args.sparsity,
        "bits": args.bits,
        "format": args.format,
        "entropy": args.entropy,
        "target_bits": args.target_bits,
        "target_distortion": args.target_distortion,
        "target_size": args.target_size,
        "relative_to": args.relative_to,
        "per_channel": args.per_channel,
        "init": args.init,
    }
    if any(x is not None for x in (args.target_bits, args.target_distortion, args.target_size)):
        flags["quant"] = "rdq"
    changes = {k: v for k, v in settings.items() if k not in ("recipe", "where")}
    changes |= {k: v for k, v in flags.items() if v is not None}
    # the recipe is built (and checked) before the checkpoint is read
    rc = recipe(args.recipe or settings.get("recipe", "lsc"), **changes)
    where = where_regexes(patterns) if patterns else None
    if _streamed(args.input, rc):
        model = compress_file(
            args.input, args.output, rc, where=where, workers=args.workers, layout=args.layout
        )
        size = Path(args.output).stat().st_size
    else:
        params, layout = read_checkpoint(args.input, layout=args.layout)
        model = compress(params, rc, where=where, layout=layout, progress=not args.quiet)
        size = save(args.output, model)
    print(format_storage_report(storage_report(model, file_bytes=size)))
    print(f"wrote {args.output}")


def _report(args) -> None:
    import json

    from lscjax._src.compressed import load
    from lscjax._src.report import format_storage_report, plot_storage, storage_report
    from lscjax._src.sparse.leaf import DEFAULT_MAX_DENSITY, serving_table

    model = load(args.file, layout="model")
    report = storage_report(model, file_bytes=Path(args.file).stat().st_size)
    max_density = DEFAULT_MAX_DENSITY if args.max_density is None else args.max_density
    served = model.block_sparse_params(max_density=max_density)
    report["serving"] = serving_table(served, max_density=max_density)
    if args.plot:
        plot_storage(report, args.plot)
    if args.json:
        print(json.dumps({"file": str(args.file), "meta": model.meta, **report}, indent=1))
    else:
        print(format_storage_report(report))
        if args.plot:
            print(f"plot: {args.plot}")


def _bench(args) -> None:
    folder = Path(__file__).resolve().parents[3] / "benchmarks"
    scripts = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not scripts:
        raise LscError(f"no benchmarks found in {folder} (run from a source checkout)")
    failed = []
    for script in scripts:
        if args.only and script.stem not in args.only:
            continue
        print(f"== {script.name}", flush=True)
        done = subprocess.run([sys.executable, str(script), *(["--quick"] if args.quick else [])])
        if done.returncode != 0:
            failed.append(script.stem)
    if failed:
        raise LscError(f"goal missed or run failed (exit status != 0): {', '.join(failed)}")


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
    demo.add_argument(
        "--out",
        default=None,
        help="where to write the compressed file (default: a temporary file, deleted when the "
        "demo ends)",
    )
    demo.set_defaults(run=_demo)

    comp = sub.add_parser(
        "compress",
        parents=[common],
        help="compress a checkpoint (.npz, .safetensors or its index/folder, .msgpack, orbax)",
    )
    comp.add_argument("input", help="checkpoint file or orbax folder")
    comp.add_argument("-o", "--output", required=True, help="the .lsc file to write")
    comp.add_argument(
        "--recipe",
        help="the shipped recipe to start from: lsc, deep_compression, ... (default: the "
        "recipe file's, else lsc)",
    )
    comp.add_argument(
        "--recipe-file",
        help="TOML (or .json) file: recipe settings, 'where' and per-layer 'rules' (regex "
        "pattern -> sparsity, bits, format, keep_dense; the first matching rule wins)",
    )
    comp.add_argument(
        "--where",
        action="append",
        metavar="REGEX",
        help="compress the leaves whose path (e.g. encoder/layer/0/attention/self/query/kernel) "
        "contains a match of REGEX (re.search: anchor with ^ and $ for a full match); "
        "repeatable, a leaf matching any is selected (default: the recipe file's, else leaves "
        "named 'kernel' with ndim >= 2)",
    )
    comp.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "flax", "torch"],
        help="torch: a PyTorch / Hugging Face state dict (dotted names, Linear weight "
        "[out, in]), converted to Flax names and orientation; auto (default): torch when the "
        "names are dotted with 'weight' leaves",
    )
    comp.add_argument("--sparsity", type=float, help="overall sparsity (default: the recipe's)")
    comp.add_argument("--bits", type=int, help="code bits for every layer (0: float32 values)")
    comp.add_argument(
        "--format", help="storage format (lsc, ri, sri, csr, ..., trellis with --target-*)"
    )
    comp.add_argument("--entropy", choices=["ans", "context", "huffman", "none"])
    comp.add_argument(
        "--init",
        choices=["linear", "density", "random", "kmeans++"],
        help="the k-means init (default linear: the smallest files; density: less error)",
    )
    comp.add_argument(
        "--per-channel",
        action="store_true",
        default=None,
        help="one k-means codebook per output channel instead of one per layer",
    )
    comp.add_argument(
        "--target-bits",
        type=float,
        help="entropy-constrained quantization (rdq) to this many encoded bits per weight of "
        "the quantized layers: the best quality that fits",
    )
    comp.add_argument(
        "--target-distortion",
        type=float,
        help="rdq to this relative MSE of the quantized layers: the smallest file within it",
    )
    comp.add_argument(
        "--target-size",
        type=int,
        help="rdq to this many bytes of .lsc file: the best quality whose file fits",
    )
    comp.add_argument(
        "--relative-to",
        choices=("layer", "selection"),
        help="with --target-*: each layer's distortion relative to its own variance (layer, "
        "the default) or to that of all quantized weights (selection: the fewest bits for "
        "--target-distortion)",
    )
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
    rep.add_argument(
        "--max-density",
        type=float,
        help="for the serving table: kernels with a larger fraction of non-zero blocks are "
        "served dense, as lscjax.load(..., layout='block_sparse') does (default: "
        "lscjax.flax.DEFAULT_MAX_DENSITY)",
    )
    rep.set_defaults(run=_report)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="run the benchmarks (source checkout)",
        description="Run the benchmark scripts one after the other. Each prints its goal checks "
        "and exits non-zero when one is not met (a --quick run checks them at its smaller "
        "sizes); this command runs all of them and then exits 1 naming those that failed.",
    )
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
