"""Starts a KServe ModelServer with the pet classifier (``mlops serve`` and the image's entry).

    python -m components.serve.server --package-dir /mnt/models --name pet-classifier
    python -m components.serve.server --model pet-classifier@production --registry s3://…
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

from components.common.helptext import HelpFormatter
from components.common.registry import ModelRegistry, RegistryError
from components.common.service import PortTaken, check_port_free
from components.monitor.capture import CaptureConfig
from components.serve.edge import BoundedHttpProtocol
from components.serve.limits import (
    add_edge_options,
    edge_limits,
    positive_int,
    positive_seconds,
)
from components.serve.predictor import PetClassifier, ServingLimits


def resolve_package(model_ref: str, registry_uri: str, cache_dir: str) -> tuple[str, str]:
    """``NAME[:VERSION|@ALIAS]`` -> (model name, local package folder), checksums verified."""
    if "@" in model_ref:
        name, ref = model_ref.split("@", 1)
        ref = "@" + ref
    elif ":" in model_ref:
        name, ref = model_ref.split(":", 1)
    else:
        name, ref = model_ref, "latest"
    registry = ModelRegistry(registry_uri)
    version = registry.resolve(name, ref)
    dest = Path(cache_dir) / name / str(version)
    if not (dest / "model.onnx").is_file():
        registry.download(name, version, dest)
    return name, str(dest)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def capture_config(args):
    """The capture settings from the options (whose defaults read ``MLOPS_CAPTURE_*``), or
    None when no capture store is named."""
    if not args.capture_uri:
        return None
    return CaptureConfig.from_env(uri=args.capture_uri, sample_rate=args.capture_sample_rate,
                                  image_rate=args.capture_image_rate,
                                  queue_records=args.capture_queue,
                                  batch_records=args.capture_batch_records,
                                  batch_seconds=args.capture_batch_seconds)


def build_parser() -> argparse.ArgumentParser:
    home = Path(os.environ.get("MLOPS_HOME") or Path.home() / ".mlops")
    limits = ServingLimits()
    p = argparse.ArgumentParser(prog="mlops serve", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="NAME, NAME:VERSION or NAME@ALIAS from the registry")
    src.add_argument("--package-dir", help="a package folder (KServe mounts it at /mnt/models)")
    p.add_argument("--registry", default=str(home / "registry"), help="registry URI")
    p.add_argument("--name", default="", help="served model name (default: the model's name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind: 127.0.0.1 serves this machine only; 0.0.0.0 (as in "
                        "the container) every interface")
    p.add_argument("--port", type=_port, default=8080, help="HTTP port (1-65535)")
    p.add_argument("--max-instances", type=positive_int, default=limits.max_instances,
                   help="most images in one request")
    p.add_argument("--max-pixels", type=positive_int, default=limits.max_pixels,
                   help="largest image (width x height, from its header); the limit "
                        "ingestion applies (MLOPS_MAX_PIXELS), 50 MP unless set")
    p.add_argument("--max-request-pixels", type=positive_int, default=limits.max_request_pixels,
                   help="most pixels of all images of one request together")
    p.add_argument("--max-pixels-per-byte", type=positive_int, default=limits.max_pixels_per_byte,
                   help="beyond 4 MP, most pixels the lossless images (PNG, WebP …) of a "
                        "request may declare per byte of their files (JPEG is exempt)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="threads that decode images off the event loop (0: as many as "
                        "--ort-threads when set, else one per core up to 4)")
    add_edge_options(p)
    env = os.environ.get
    cap = p.add_argument_group(
        "capture (monitoring data; each default comes from an MLOPS_CAPTURE_* variable when set)")
    cap.add_argument("--capture-uri", default=env("MLOPS_CAPTURE_URI", ""),
                     help="monitoring store to capture inputs, embeddings and predictions to "
                          "(s3://… or a path; $MLOPS_CAPTURE_URI; empty: no capture)")
    cap.add_argument("--capture-sample-rate", type=_share,
                     default=env("MLOPS_CAPTURE_SAMPLE_RATE", "1"),
                     help="share of requests captured ($MLOPS_CAPTURE_SAMPLE_RATE)")
    cap.add_argument("--capture-image-rate", type=_share,
                     default=env("MLOPS_CAPTURE_IMAGE_RATE", "0.05"),
                     help="share of captured instances whose image is kept, content-addressed "
                          "($MLOPS_CAPTURE_IMAGE_RATE)")
    cap.add_argument("--capture-queue", type=positive_int,
                     default=env("MLOPS_CAPTURE_QUEUE_RECORDS", "10000"),
                     help="most records waiting in memory; beyond it records are dropped and "
                          "counted ($MLOPS_CAPTURE_QUEUE_RECORDS)")
    cap.add_argument("--capture-batch-records", type=positive_int,
                     default=env("MLOPS_CAPTURE_BATCH_RECORDS", "500"),
                     help="records per written file ($MLOPS_CAPTURE_BATCH_RECORDS)")
    cap.add_argument("--capture-batch-seconds", type=positive_seconds,
                     default=env("MLOPS_CAPTURE_BATCH_SECONDS", "60"),
                     help="longest wait before a batch is written "
                          "($MLOPS_CAPTURE_BATCH_SECONDS)")
    cap.add_argument("--revision", choices=["stable", "canary"],
                     default=env("MLOPS_REVISION", ""),
                     help="which revision this server is, recorded with captured requests "
                          "($MLOPS_REVISION; neither: stable, except in a Knative revision, "
                          "whose records name the revision ($K_REVISION) and get their role "
                          "from the InferenceService's status)")
    p.add_argument("--cache-dir", default=str(home / "serving"),
                   help="where registry packages are downloaded")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (each loads the model)")
    p.add_argument("--ort-threads", type=int, default=0,
                   help="ONNX Runtime threads per inference (0: one per core)")
    p.add_argument("--ort-spin-wait", action="store_true",
                   help="let idle ONNX Runtime threads spin (faster alone, slower beside the "
                        "HTTP server on few cores)")
    p.add_argument("--log-each-request", action="store_true",
                   help="an access-log and a latency line per request (off: they cost about "
                        "as much as the inference; Prometheus metrics count every request)")
    return p


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.model:
            name, package_dir = resolve_package(args.model, args.registry, args.cache_dir)
        else:
            name, package_dir = "pet-classifier", args.package_dir
    except (RegistryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from kserve import ModelServer

    from components.serve import kserve_patches  # deferred: imports KServe, not for --help

    edge = edge_limits(args)

    if args.revision not in ("", "stable", "canary"):  # from $MLOPS_REVISION: not checked
        print(f"error: invalid --revision (MLOPS_REVISION) {args.revision!r}: expect stable "
              "or canary.", file=sys.stderr)
        return 2
    try:
        capture = capture_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    model = PetClassifier(args.name or name, package_dir,
                          ServingLimits(max_instances=args.max_instances,
                                        max_pixels=args.max_pixels,
                                        max_request_pixels=args.max_request_pixels,
                                        max_pixels_per_byte=args.max_pixels_per_byte,
                                        decode_threads=args.decode_threads),
                          capture=capture, revision=args.revision,
                          intra_op_threads=args.ort_threads, spin_wait=args.ort_spin_wait,
                          edge=edge)
    try:
        check_port_free(args.host, args.port)
        model.load()
    except (FileNotFoundError, ValueError, PortTaken) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kserve_patches.trim_request_path(args.log_each_request, args.workers)
    kserve_patches.configure_uvicorn(
        args.host, functools.partial(BoundedHttpProtocol, limits=edge),
        keepalive_timeout_s=edge.keepalive_timeout_s)
    server = ModelServer(http_port=args.port, enable_grpc=False, workers=args.workers,
                         enable_latency_logging=args.log_each_request)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {model.name} on http://{shown}:{args.port} "
          f"(V1 /v1/models/{model.name}:predict, V2 /v2/models/{model.name}/infer, /metrics)",
          file=sys.stderr, flush=True)
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
