"""Running pipelines on this machine (kfp.local) and compiling them for a cluster."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from pipelines import PIPELINES, load

logger = logging.getLogger(__name__)


_CHANNEL = re.compile(r"inputs\.parameter_values\['(pipelinechannel--[A-Za-z0-9_\-]+)'\]")
_SAFE_NAMES = {"__builtins__": {}, "True": True, "False": False, "None": None, "int": int,
               "float": float, "str": str, "bool": bool}


def _evaluate_condition(condition: str, io_store) -> bool:
    """A ``dsl.If`` condition as KFP compiles it, evaluated against the run's values.

    kfp.local 2.16 substitutes the channel name inside ``inputs.parameter_values['…']``,
    cannot evaluate the result, logs a warning and returns False, so every ``dsl.If`` on a
    task output is silently skipped. This resolves each channel, turns the CEL literals
    ``true``/``false`` into Python ones and evaluates; a value that cannot be resolved is an
    error, never a silent False.
    """
    from kfp.local.orchestrator.enhanced_dag_orchestrator import ConditionEvaluator

    if not condition or not condition.strip():
        return True

    def resolve(match: re.Match) -> str:
        value = ConditionEvaluator._resolve_pipeline_channel(match.group(1), io_store)
        if value is None:
            raise RuntimeError(f"Cannot resolve {match.group(1)} in condition {condition!r}")
        return repr(value)

    expr = _CHANNEL.sub(resolve, condition)
    expr = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", expr))
    result = bool(eval(expr, dict(_SAFE_NAMES), {}))  # noqa: S307 - restricted, compiled IR
    logger.info("Condition %s -> %s", condition, result)
    return result


def _patch_local_conditions() -> None:
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    dag.ConditionEvaluator.evaluate_condition = staticmethod(_evaluate_condition)


def run_local(name: str, arguments: dict, pipeline_root: str | os.PathLike) -> dict:
    """Runs a pipeline under ``kfp.local`` with the SubprocessRunner in this environment.

    Each component runs as a subprocess of this Python interpreter, so the package must be
    installed in it (``make venv`` does that). Raises on the first failed task.

    Returns:
        The pipeline's outputs: parameters as values, artifacts as ``kfp.dsl`` artifacts with
        ``uri`` and ``metadata``.
    """
    from kfp import local

    _patch_local_conditions()
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
