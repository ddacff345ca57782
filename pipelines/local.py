"""Running pipelines on this machine (kfp.local) and compiling them for a cluster."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from pipelines import PIPELINES, load

logger = logging.getLogger(__name__)


def run_local(name: str, arguments: dict, pipeline_root: str | os.PathLike) -> dict:
    """Runs a pipeline under ``kfp.local`` with the SubprocessRunner in this environment.

    Each component runs as a subprocess of this Python interpreter, so the package must be
    installed in it (``make venv`` does that). Raises on the first failed task.

    Returns:
        The pipeline's outputs: parameters as values, artifacts as ``kfp.dsl`` artifacts with
        ``uri`` and ``metadata``.
    """
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=os.fspath(pipeline_root), raise_on_error=True)
    pipeline = load(name)
    with warnings.catch_warnings():
        # Our image is not named "python…", which makes the SubprocessRunner warn that the
        # task may need another environment; locally it runs in this one on purpose.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = pipeline(**arguments)
    return dict(task.outputs)


def compile_all(out_dir: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Compiles pipelines to KFP IR YAML, one ``<name>.yaml`` each, for the Kubeflow UI."""
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or sorted(PIPELINES):
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(load(name), os.fspath(path))
        logger.info("Compiled %s -> %s", name, path)
        written.append(path)
    return written
