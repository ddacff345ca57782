"""Starts a KServe ModelServer with the pet classifier (``mlops serve`` and the image's entry).

    python -m components.serve.server --package-dir /mnt/models --name pet-classifier
    python -m components.serve.server --model pet-classifier@production --registry s3://…
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def resolve_package(model_ref: str, registry_uri: str, cache_dir: str) -> tuple[str, str]:
    """``NAME[:VERSION|@ALIAS]`` -> (model name, local package folder), checksums verified."""
    from components.common.registry import ModelRegistry

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


def build_parser() -> argparse.ArgumentParser:
    home = Path(os.environ.get("MLOPS_HOME") or Path.home() / ".mlops")
    p = argparse.ArgumentParser(prog="mlops serve", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="NAME, NAME:VERSION or NAME@ALIAS from the registry")
    src.add_argument("--package-dir", help="a package folder (KServe mounts it at /mnt/models)")
    p.add_argument("--registry", default=str(home / "registry"), help="registry URI")
    p.add_argument("--name", default="", help="served model name (default: the model's name)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-instances", type=int, default=256)
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    p.add_argument("--log-uri", default="", help="store URI for request/response samples")
    p.add_argument("--log-sample-rate", type=float, default=1.0)
    p.add_argument("--cache-dir", default=str(home / "serving"))
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (each loads the model)")
    p.add_argument("--log-each-request", action="store_true",
                   help="an access-log and a latency line per request (off: they cost about "
                        "as much as the inference; Prometheus metrics count every request)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from components.common.registry import RegistryError

    try:
        if args.model:
            name, package_dir = resolve_package(args.model, args.registry, args.cache_dir)
        else:
            name, package_dir = "pet-classifier", args.package_dir
    except (RegistryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from kserve import ModelServer

    from components.serve.predictor import PetClassifier, ServingLimits

    model = PetClassifier(args.name or name, package_dir,
                          ServingLimits(max_instances=args.max_instances,
                                        max_body_bytes=args.max_body_bytes),
                          log_uri=args.log_uri, log_sample_rate=args.log_sample_rate)
    try:
        model.load()
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # KServe's REST server binds every interface (0.0.0.0), as it does in a container.
    server = ModelServer(http_port=args.port, enable_grpc=False, workers=args.workers,
                         enable_latency_logging=args.log_each_request)
    if not args.log_each_request:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    print(f"Serving {model.name} on http://127.0.0.1:{args.port} "
          f"(V1 /v1/models/{model.name}:predict, V2 /v2/models/{model.name}/infer, /metrics)",
          file=sys.stderr, flush=True)
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
