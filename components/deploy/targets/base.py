"""The deployment target interface: environments, revisions, and the errors and checks every
target shares.

A target manages *environments* (``test``, ``production``). Each environment serves one stable
revision and, during a canary, a second one. The release logic in :mod:`components.deploy.release`
only speaks this interface, so the same canary rules run on a cluster and on a laptop. The
implementations are :class:`~components.deploy.targets.local.LocalTarget` and
:class:`~components.deploy.targets.kserve.KServeTarget`; :mod:`components.deploy.targets` keeps
the one registry of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

from components.common import k8s
from components.common.errors import MlopsError
from components.common.registry import ModelRegistry

ENVIRONMENTS = tuple(k8s.ENVIRONMENTS)


class DeploymentError(MlopsError, RuntimeError):
    """A deployment step that could not be done; the message says what to do."""


@dataclass
class Revision:
    """One served model version in an environment.

    Attributes:
        version: The registry version it serves.
        url: Where this revision answers directly (for analysis and tests).
        storage_uri: The package it loaded.
        detail: Target-specific facts (process id and log file, or revision name).
    """

    version: int
    url: str
    storage_uri: str
    detail: dict = field(default_factory=dict)


@dataclass
class Deployment:
    """The state of one environment.

    Attributes:
        environment: ``test`` or ``production``.
        name: The served model name (``/v1/models/<name>``), also the InferenceService name.
        url: The environment's endpoint, the address applications use.
        stable: The revision taking (the rest of) the traffic.
        canary: The revision under canary, if any.
        canary_percent: Its share of the traffic at the endpoint (the local target does not
            split: there it is recorded, not applied).
    """

    environment: str
    name: str
    url: str
    stable: Revision | None
    canary: Revision | None = None
    canary_percent: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_env(environment: str) -> str:
    if environment not in ENVIRONMENTS:
        raise DeploymentError(f"Unknown environment {environment!r}. Expect one of "
                              f"{', '.join(ENVIRONMENTS)}.")
    return environment


def _check_percent(percent: int) -> int:
    if not 0 < int(percent) < 100:
        raise DeploymentError(f"Invalid canary traffic percent {percent}. Expect 1 to 99.")
    return int(percent)


class DeploymentTarget(ABC):
    """Deploys registry versions of one model into environments."""

    def __init__(self, registry_uri: str, model_name: str):
        self.registry = ModelRegistry(registry_uri)
        self.model_name = model_name

    @classmethod
    @abstractmethod
    def open(cls, registry_uri: str, model_name: str, *, namespace: str = "",
             state_dir: str = "", config: k8s.ServingConfig | None = None
             ) -> DeploymentTarget:
        """The target built from :func:`~components.deploy.targets.open_target`'s options;
        raises :class:`DeploymentError` when one it needs is missing."""

    def served_name(self, environment: str) -> str:
        return self.model_name + k8s.ENVIRONMENTS[_check_env(environment)]["suffix"]

    @abstractmethod
    def status(self, environment: str) -> Deployment | None:
        """The environment's state, or None when nothing is deployed there."""

    @abstractmethod
    def deploy(self, environment: str, version: int, timeout: float = 300) -> Deployment:
        """Serves ``version`` with all traffic, replacing what was there once it is ready."""

    def restore(self, environment: str, version: int, timeout: float = 300) -> Deployment:
        """Serves an earlier ``version`` again with all traffic (a governance rollback), with
        the configuration it was released with where the target records one."""
        return self.deploy(environment, version, timeout)

    @abstractmethod
    def start_canary(self, environment: str, version: int, percent: int,
                     timeout: float = 300) -> Deployment:
        """Serves ``version`` beside the stable revision with ``percent`` of the traffic."""

    @abstractmethod
    def set_canary_traffic(self, environment: str, percent: int) -> Deployment:
        """Changes the canary's share of the traffic."""

    @abstractmethod
    def promote(self, environment: str, timeout: float = 300) -> Deployment:
        """Makes the canary the stable revision with all traffic."""

    @abstractmethod
    def rollback(self, environment: str, timeout: float = 300) -> Deployment:
        """Removes the canary; all traffic stays on (or returns to) the stable revision."""

    @abstractmethod
    def delete(self, environment: str) -> None:
        """Removes everything served in the environment."""

    def revision_urls(self, environment: str) -> dict[str, str]:
        """``{"stable": url, "canary": url}`` of the revisions now served."""
        dep = self.status(environment)
        if dep is None:
            return {}
        out = {"stable": dep.stable.url} if dep.stable else {}
        if dep.canary:
            out["canary"] = dep.canary.url
        return out

    def probe_headers(self, environment: str, role: str) -> dict[str, str]:
        """Headers the canary analysis sends with its probes to the ``role`` revision's own
        URL (none by default)."""
        return {}

    def _require(self, environment: str, canary: bool | None = None) -> Deployment:
        dep = self.status(environment)
        if dep is None or dep.stable is None:
            raise DeploymentError(f"Nothing is deployed in {environment!r} for "
                                  f"{self.model_name!r}: deploy a version there first.")
        if canary is True and dep.canary is None:
            raise DeploymentError(f"No canary is running in {environment!r}: start one first.")
        if canary is False and dep.canary is not None:
            raise DeploymentError(
                f"A canary of version {dep.canary.version} is already running in "
                f"{environment!r}: promote or roll it back before starting another.")
        return dep

