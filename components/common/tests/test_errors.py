"""One error base: every project error carries its exit code and HTTP status as attributes."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from components.common.errors import EXIT_FAILURE, EXIT_USER_MISTAKE, MlopsError, UserError

ROOT = Path(__file__).resolve().parents[3]

#: Every project error a person can see, with the exit code ``mlops`` gives it (unchanged
#: from the codes the command line inferred before) and its HTTP status at a serving edge.
EXPECTED = [
    ("components.cli.common", "OptionError", 2, 400),
    ("components.common.images", "ContextRejected", 2, 400),
    ("components.common.images", "ImageRejected", 2, 400),
    ("components.common.kubeapi", "KubeConfigMissing", 1, 500),
    ("components.common.records", "RecordLogError", 1, 500),
    ("components.common.registry", "RegistryError", 2, 400),
    ("components.common.registry", "ReleaseHeld", 1, 500),
    ("components.common.runtime", "ModelMetadataError", 2, 400),
    ("components.common.runtime", "UnsupportedModelError", 1, 500),
    ("components.common.storage", "StorageError", 1, 500),
    ("components.common.storage", "UnsafeKeyError", 1, 400),
    ("components.common.storage", "ObjectNotFoundError", 1, 500),
    ("components.common.storage", "AlreadyExistsError", 1, 500),
    ("components.common.storage", "StorageConfigError", 1, 500),
    ("components.common.storage", "StorageUnavailableError", 1, 500),
    ("components.common.storage.lock", "LockTimeout", 1, 500),
    ("components.common.storage.lock", "LockLost", 1, 500),
    ("components.common.service", "PortTaken", 2, 400),
    ("components.common.trainjob", "TrainJobSpecError", 2, 400),
    ("components.deploy.client", "EndpointError", 1, 500),
    ("components.deploy.client", "RequestRefused", 2, 400),
    ("components.deploy.targets.base", "DeploymentError", 1, 500),
    ("components.govern.sinks", "DeliveryError", 1, 500),
    ("components.govern.policy", "PolicyError", 2, 400),
    ("components.govern.receiver", "BadPayload", 2, 400),
    ("components.govern.trigger", "LaunchError", 1, 500),
    ("components.govern.core", "GovernError", 2, 400),
    ("components.govern.trace", "TraceError", 2, 400),
    ("components.ingest.core", "IngestError", 2, 400),
    ("components.ingest.shards", "ShardError", 1, 500),
    ("components.monitor.core", "MonitorError", 2, 400),
    ("components.monitor.drift", "DriftError", 2, 400),
    ("components.monitor.estimate", "EstimateError", 2, 400),
    ("components.monitor.export", "ExportError", 2, 400),
    ("components.monitor.feedback", "LabelError", 2, 400),
    ("components.monitor.feedback", "LabelConflict", 2, 409),
    ("components.monitor.reference", "ReferenceDataError", 2, 400),
    ("components.monitor.reference", "ReferenceMissing", 2, 400),
    ("components.package.core", "PackageError", 1, 500),
    ("components.retrain.core", "NothingToRetrainError", 2, 400),
    ("components.serve.bodies", "BadRequest", 2, 400),
    ("components.serve.kserve_patches", "UnsupportedKServe", 1, 500),
    ("components.train.core", "TrainError", 2, 400),
    ("components.train.trainjob", "TrainJobFailed", 1, 500),
    ("pipelines.local", "PipelineFailed", 1, 500),
]


@pytest.mark.parametrize(("module", "name", "exit_code", "http_status"), EXPECTED,
                         ids=[row[1] for row in EXPECTED])
def test_each_project_error_says_its_exit_code_and_http_status(module, name, exit_code,
                                                               http_status):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, MlopsError)
    assert (cls.exit_code, cls.http_status) == (exit_code, http_status)


def test_the_two_kinds():
    assert (MlopsError.exit_code, MlopsError.http_status) == (EXIT_FAILURE, 500)
    assert (UserError.exit_code, UserError.http_status) == (EXIT_USER_MISTAKE, 400)
    assert issubclass(UserError, MlopsError)


def _exception_classes() -> dict[str, str]:
    """Every class defined at a module's top level in components/ and pipelines/ (tests
    excluded) that derives from an exception, by name -> "file:line"; a base is followed
    by its name across the project."""
    builtin = {n for n, v in vars(builtins).items()
               if isinstance(v, type) and issubclass(v, BaseException)}
    classes: dict[str, tuple[list[str], str]] = {}
    for top in ("components", "pipelines"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "tests" in path.relative_to(ROOT).parts:
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    bases = [b.id if isinstance(b, ast.Name) else
                             b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    classes[node.name] = (bases, where)
    errors = set(builtin)
    changed = True
    while changed:
        changed = False
        for name, (bases, _) in classes.items():
            if name not in errors and any(b in errors for b in bases):
                errors.add(name)
                changed = True
    return {name: where for name, (_, where) in classes.items() if name in errors}


def test_every_project_error_derives_from_the_base():
    """A new error class cannot forget its exit code: it derives from MlopsError (or
    UserError), and the table above names it. Private classes (a leading underscore) are
    a module's own control flow and never reach a person."""
    found = {n: w for n, w in _exception_classes().items()
             if not n.startswith("_") and n not in ("MlopsError", "UserError")}
    listed = {row[1] for row in EXPECTED}
    missing = {n: w for n, w in found.items() if n not in listed}
    assert not missing, f"add these errors to EXPECTED with their exit code: {missing}"
    modules = {row[1]: row[0] for row in EXPECTED}
    for name in found:
        cls = getattr(importlib.import_module(modules[name]), name)
        assert issubclass(cls, MlopsError), f"{name} ({found[name]}) does not derive from " \
            "components.common.errors.MlopsError"
