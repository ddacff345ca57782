"""Running pipelines on this machine (kfp.local) and compiling them for a cluster."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from components.common.errors import MlopsError
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# The last line of a Python traceback: "SomeError: message" (module-qualified or not).
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Failed|Failure|Exit))"
                         r"(?::\s*(.*))?$")


class PipelineFailed(MlopsError, RuntimeError):
    """A pipeline task failed; names the task, the error's own text and the full log.

    Attributes:
        task: The failed task's name (as kfp.local prints it).
        error: The task's own error line, e.g. ``ValueError: epochs must be >= 1``.
        log_path: The file with every task's complete log, or None when it was streamed.
    """

    def __init__(self, pipeline: str, task: str, error: str, log_path: str | None):
        self.pipeline, self.task, self.error, self.log_path = pipeline, task, error, log_path
        where = f" (full log: {log_path})" if log_path else ""
        super().__init__(f"step '{task}' of pipeline '{pipeline}' failed: {error}{where}")


class _TaskLog:
    """A stand-in for sys.stdout while kfp.local runs: every line goes to the log file,
    task starts and ends go to ``on_event``, and each task's last error line is kept."""

    def __init__(self, log, on_event):
        self.log, self.on_event = log, on_event
        self.buffer = ""
        self.current: str | None = None
        self.last_error: dict[str, str] = {}
        self.failed: list[str] = []

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(_ANSI.sub("", line).strip())
        return len(text)

    def _line(self, line: str) -> None:
        if m := _TASK_START.search(line):
            self.current = m.group(1)
            self.on_event("start", self.current, "")
        elif m := _TASK_END.search(line):
            if m.group(2) != "SUCCESS":
                self.failed.append(m.group(1))
            self.on_event("end", m.group(1), m.group(2))
        elif self.current and (m := _ERROR_LINE.match(line)) and " - " not in line[:20]:
            # The error's own text; its type only when it has no message.
            self.last_error[self.current] = m.group(2) or m.group(1)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


def run_local(name: str, arguments: dict, pipeline_root: str | os.PathLike, *,
              log_path: str | os.PathLike | None = None, on_event=None) -> dict:
    """Runs a pipeline under ``kfp.local`` with the SubprocessRunner in this environment.

    Each component runs as a subprocess of this Python interpreter, so the package must be
    installed in it (``make venv`` does that).

    Args:
        name: A pipeline name from ``pipelines.PIPELINES``.
        arguments: The pipeline's parameters.
        pipeline_root: Where kfp.local writes task outputs.
        log_path: If given, every task's log goes to this file instead of stdout.
        on_event: With ``log_path``, called as ``on_event(kind, task, status)`` for each task
            start (``"start"``) and end (``"end"``, with kfp.local's status), for progress.

    Returns:
        The pipeline's outputs: parameters as values, artifacts as ``kfp.dsl`` artifacts with
        ``uri`` and ``metadata``.

    Raises:
        PipelineFailed: A task failed; the exception names it and its own error line.
    """
    import sys

    from kfp import local

    _patch_local_conditions()
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=os.fspath(pipeline_root), raise_on_error=True)
    pipeline = load(name)
    capture = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        capture = _TaskLog(log, on_event or (lambda *a: None))
    saved = sys.stdout
    try:
        if capture is not None:
            sys.stdout = capture
        with warnings.catch_warnings():
            # Our image is not named "python…", which makes the SubprocessRunner warn that the
            # task may need another environment; locally it runs in this one on purpose.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = pipeline(**arguments)
    except RuntimeError as exc:
        failed = (capture.failed[-1] if capture and capture.failed
                  else _failed_task_from_message(str(exc)))
        error = (capture.last_error.get(failed, "") if capture else "") or _ANSI.sub("", str(exc))
        raise PipelineFailed(name, failed, error,
                             os.fspath(log_path) if log_path is not None else None) from exc
    finally:
        sys.stdout = saved
        if capture is not None:
            capture.log.close()
    return dict(task.outputs)


def _failed_task_from_message(message: str) -> str:
    m = re.search(r"Inner task failed: ([^.]*)\.", _ANSI.sub("", message))
    return (m.group(1).strip() if m else "") or "unknown"


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
