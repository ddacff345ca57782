"""``mlops data generate | versions``: a sample data lake and the published dataset versions."""

from __future__ import annotations

from components.cli.common import Progress, check_range
from components.common.paths import mlops_home


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="sample data lake and dataset versions")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write a deterministic sample data lake")
    gen.add_argument("--out", required=True,
                     help="where to write the lake: a folder, or s3://bucket/prefix")
    gen.add_argument("--n", type=int, default=2000, help="number of images")
    gen.add_argument("--size", default="64",
                     help="image side in pixels (square sample images), or a camera size WxH "
                          "(1280x720, 1920x1080, 4000x3000; or 720p, 1080p, 12mp) for "
                          "CCTV-like JPEG frames")
    gen.add_argument("--quality", type=int, default=None,
                     help="JPEG quality (default: 90 for square images, 85 for camera sizes)")
    gen.add_argument("--workers", type=int, default=1,
                     help="processes rendering images (the bytes do not depend on it)")
    gen.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same "
                                                         "images")
    gen.add_argument("--condition", default="day", choices=["day", "night", "blur"],
                     help="lighting of the scene: night and blur make drifted data")
    gen.add_argument("--cat-fraction", type=float, default=0.5,
                     help="share of cats (change it for a prior shift)")
    gen.add_argument("--layout", default="folders", choices=["folders", "kaggle", "csv"],
                     help="folders: <class>/<file>; kaggle: <class>.<n>.jpg in one folder; "
                          "csv: photos/<n>.jpg and a labels.csv (key,label) beside them")
    gen.set_defaults(func=_cmd_generate)
    ver = data_sub.add_parser("versions", help="list published dataset versions")
    ver.add_argument("--root", default=str(mlops_home() / "datasets"),
                     help="the dataset root the ingest step publishes to")
    ver.set_defaults(func=_cmd_versions)


def _cmd_generate(args) -> int:
    from components.common.storage import open_store
    from components.datagen.core import LABELS_CSV, LakeSpec, generate, parse_size

    check_range("--n", args.n, 1)
    size = parse_size(args.size)  # 64, or a camera size such as 1920x1080
    if isinstance(size, int):
        check_range("--size", size, 8)
    check_range("--cat-fraction", args.cat_fraction, 0.0, 1.0)
    check_range("--workers", args.workers, 1)
    spec = LakeSpec(n=args.n, size=size, seed=args.seed, condition=args.condition,
                    cat_fraction=args.cat_fraction, layout=args.layout, quality=args.quality)
    store = open_store(args.out)
    counts = generate(spec, store, progress=Progress("generating"), workers=args.workers)
    print(f"Wrote {spec.n} images ({', '.join(f'{v} {k}s' for k, v in counts.items())}) "
          f"to {store.uri}")
    if spec.layout == "csv":
        print(f"Labels: {store.uri_of(LABELS_CSV)} (train with --labels-csv "
              f"{store.uri_of(LABELS_CSV)})")
    return 0


def _cmd_versions(args) -> int:
    from components.ingest.snapshot import version_summaries

    versions = version_summaries(args.root)
    if not versions:
        print(f"No dataset version under {args.root}: `mlops run ingest --data LAKE` "
              "publishes one.")
    for v in versions:
        when = (v["published_at"] or "(date not recorded)")[:19].replace("T", " ")
        b = v["bytes"]
        size = f"{v['images']} images" + ("" if b is None else f", {b / 2**20:.1f} MiB"
                                           if b >= 2**20 else f", {b / 1024:.0f} KiB")
        classes = ", ".join(f"{c} {n}" for c, n in sorted(v["classes"].items()))
        print(f"{v['version']}  {when}  {size} ({classes})  from {v['source_uri']}")
    return 0
