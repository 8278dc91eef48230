"""The `lscjax` command."""

import argparse
import sys

from lscjax._src.errors import LscError


def _demo(args) -> None:
    from lscjax._src.demo import run_demo

    run_demo(epochs=args.epochs, data=args.data, out=args.out, quiet=args.quiet)


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
    demo.add_argument("--epochs", type=float, default=4, help="dense training epochs")
    demo.add_argument(
        "--data",
        default=None,
        help="folder with Fashion-MNIST IDX files (default: embedded subset)",
    )
    demo.add_argument("--out", default=None, help="where to write the compressed file")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the `lscjax` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LscError, FileNotFoundError, OSError) as err:
        print(f"lscjax {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
