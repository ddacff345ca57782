"""Where a model is deployed: the one registry of deployment targets.

Every target implements :class:`~components.deploy.targets.base.DeploymentTarget`
(``base.py``): the release logic in :mod:`components.deploy.release` only speaks that interface,
so the same canary rules run on a cluster and on a laptop.

* ``kserve`` (:class:`~components.deploy.targets.kserve.KServeTarget`, ``kserve.py``) applies
  the InferenceService objects of :mod:`components.common.k8s` through the Kubernetes API.
* ``local`` (:class:`~components.deploy.targets.local.LocalTarget`, ``local.py``) runs real
  KServe model servers as processes on loopback behind one router per environment.

A new target is registered here, in :data:`TARGETS`, and nowhere else: the command line's
``--target`` choices and :func:`open_target` read it. The registry names each class by its
import path, and this module imports no first-party code when it loads: the command line reads
:data:`TARGETS` to build its parser before ``mlops submit`` sets the compile settings (the
targets import :mod:`components.settings`), and without the targets' imports (the registry
client, NumPy, requests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.common import k8s
    from components.deploy.targets.base import DeploymentTarget

TARGETS: dict[str, str] = {
    "local": "components.deploy.targets.local:LocalTarget",
    "kserve": "components.deploy.targets.kserve:KServeTarget",
}
"""Every deployment target: the name ``--target`` and the pipelines' ``target`` take, and the
``module:class`` that implements it."""


def target_class(kind: str) -> type[DeploymentTarget]:
    """The class registered as ``kind`` in :data:`TARGETS`."""
    # deferred: the CLI reads TARGETS before it sets the compile settings (module doc)
    from components.deploy.targets.base import DeploymentError  # deferred: module doc

    if kind not in TARGETS:
        raise DeploymentError(f"Unknown deployment target {kind!r}. Expect "
                              f"{' or '.join(repr(name) for name in TARGETS)}.")
    module, _, name = TARGETS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def open_target(kind: str, registry_uri: str, model_name: str, *, namespace: str = "",
                state_dir: str = "", config: k8s.ServingConfig | None = None
                ) -> DeploymentTarget:
    """A target by name: ``local`` (needs ``state_dir``) or ``kserve`` (needs ``namespace``)."""
    return target_class(kind).open(registry_uri, model_name, namespace=namespace,
                                   state_dir=state_dir, config=config)
