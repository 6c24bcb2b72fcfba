"""``data`` (write a dataset to disk) and ``backbones`` (list the registered encoders)."""

from __future__ import annotations

import argparse

from segkeras.cli import common


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="write a dataset to disk")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    shapes = kinds.add_parser("shapes", help="the built-in shapes as PNGs + COCO annotations")
    shapes.add_argument("--n", type=common.positive, default=500, help="number of images")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--image-size", type=common.positive, default=128)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already in --out")
    shapes.set_defaults(run=_cmd_data_shapes)
    multiscale = kinds.add_parser(
        "multiscale", help="shapes of varied image size (256-512 px a side) and object size "
                           "(6-250 px) as PNGs + COCO annotations, for AP_S/M/L")
    multiscale.add_argument("--n", type=common.positive, default=500, help="number of images")
    multiscale.add_argument("--out", required=True)
    multiscale.add_argument("--seed", type=int, default=0)
    multiscale.add_argument("--overwrite", action="store_true",
                            help="replace a dataset already in --out")
    multiscale.set_defaults(run=_cmd_data_multiscale)

    backbones = commands.add_parser("backbones", help="list the registered encoders")
    backbones.add_argument("--size", type=common.positive, default=64,
                           help="probe input size (default 64)")
    backbones.set_defaults(run=_cmd_backbones)


def _cmd_data_shapes(args: argparse.Namespace) -> None:
    from segkeras import runs
    from segkeras.data import shapes

    common.check_output_folder(args.out, "--out")
    runs.check_existing_run(args.out, args.overwrite, names=runs.DATASET_FILES, resumable=False)
    paths = shapes.export(args.n, args.out, image_size=args.image_size, seed=args.seed)
    print(f"Wrote {args.n} images to {paths['images']}, masks to {paths['masks']} and "
          f"{paths['annotations']}.")


def _cmd_data_multiscale(args: argparse.Namespace) -> None:
    from segkeras import runs
    from segkeras.data import coco, shapes

    common.check_output_folder(args.out, "--out")
    runs.check_existing_run(args.out, args.overwrite, names=runs.DATASET_FILES, resumable=False)
    data = shapes.generate_multiscale(args.n, seed=args.seed)
    paths = coco.export(data, args.out, f"segkeras multi-scale shapes: generate_multiscale("
                                        f"{args.n}, seed={args.seed})", supercategory="shape")
    print(f"Wrote {args.n} images of {min(min(i.shape[:2]) for i in data.images)}-"
          f"{max(max(i.shape[:2]) for i in data.images)} px a side to {paths['images']}, masks "
          f"to {paths['masks']} and {paths['annotations']}.")


def _cmd_backbones(args: argparse.Namespace) -> None:
    from segkeras import backbones

    print(backbones.table(input_size=args.size))
