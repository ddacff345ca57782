"""Retraining triggers: one drift or performance episode starts one retraining run.

An *episode* is a stretch of monitoring windows in which a production version keeps
matching a ``retrain`` rule. The first window of an episode claims it with a create-only
write (``governance/<model>/episodes/v<version>-<seq>.json``): when two govern runs judge the
same episode at once, exactly one claim succeeds and only its run starts a retraining; every
later window of the same episode finds the claim and starts nothing. An episode ends after
``retrain.clear_after`` consecutive clean windows of that version (``.closed.json``), or when
it is older than ``retrain.max_episode_age``; only then can the version start another.
While any retraining run of the model is still in progress, no new one starts; that
refusal is recorded in the audit log, as is every trigger, with the verdict that caused it.

A :class:`RetrainLauncher` starts the run. Governance only defines what a launcher does and
is given one by its caller (the ``mlops govern`` handlers, the govern step's component, the
demo loop); the launchers themselves (``kfp.local``, the KFP API) are pipeline machinery and
live in :mod:`pipelines.launchers`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from components.common.errors import MlopsError
from components.common.governance import GovernanceStore
from components.common.records import now_iso, parse_time

logger = logging.getLogger(__name__)

EPISODES = "episodes"
#: A claimed episode whose launch was never recorded (the claiming run died in between) is
#: launched again by a later govern run after this long, once (``.relaunch.json`` claim).
RELAUNCH_AFTER_S = 600.0


class LaunchError(MlopsError, RuntimeError):
    """A retraining run could not be started; the message says why."""


#: The states of a run that is over: ``nothing_new`` is a retraining that ended before
#: training because no new labelled production image was kept (its error says why).
ENDED_STATES = ("succeeded", "failed", "nothing_new")


class RetrainLauncher(ABC):
    """Starts the continuous-training pipeline and tells how a started run is doing.

    ``kind`` names the launcher in the launch records, so that a later govern run asks only
    a launcher of the same kind about a run."""

    kind: str = "launcher"

    @abstractmethod
    def launch(self, trigger: dict) -> dict:
        """Starts one run for ``trigger`` (the episode and the verdict that started it).

        Returns:
            ``{"run_id", "url", "state", "launcher"}``.

        Raises:
            LaunchError: Nothing was started.
        """

    @abstractmethod
    def state(self, launch: dict) -> str:
        """``running``, one of :data:`ENDED_STATES` or ``unknown`` for a launch record."""


# ------------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------------


class Episodes:
    """``governance/<model>/episodes``: create-only claims, launches and closures."""

    def __init__(self, gov: GovernanceStore):
        self.gov = gov

    def all(self) -> list[dict]:
        """Every episode with its ``launch`` and ``closed`` records, oldest first."""
        files = {o.key.split("/", 1)[1] for o in self.gov.store.list(EPISODES)}
        out = []
        for name in sorted(files):
            if name.count(".") != 1 or not name.endswith(".json"):
                continue
            key = name[:-5]
            ep = self.gov.store.get_json(f"{EPISODES}/{name}")
            for part in ("launch", "relaunch", "closed", "ended"):
                if f"{key}.{part}.json" in files:
                    ep[part] = self.gov.store.get_json(f"{EPISODES}/{key}.{part}.json")
            out.append(ep)
        return sorted(out, key=lambda e: (e["claimed_at"], e["key"]))

    def of_version(self, version: str) -> list[dict]:
        return sorted((e for e in self.all() if str(e["model_version"]) == str(version)),
                      key=lambda e: e["seq"])

    def claim(self, version: str, seq: int, record: dict) -> tuple[dict, bool]:
        """Claims episode ``seq`` of ``version``: (the episode, claimed by us).

        ``seq`` must follow the last episode the caller saw when it decided that none is
        open: if another govern run claimed that number meanwhile, this claim fails instead
        of opening a second episode for the same condition.
        """
        key = f"v{version}-{seq:04d}"
        episode = {**record, "key": key, "seq": seq, "model_version": str(version),
                   "claimed_at": now_iso()}
        if self.gov.create(f"{EPISODES}/{key}.json", episode):
            return episode, True
        return self.gov.store.get_json(f"{EPISODES}/{key}.json"), False

    def record(self, key: str, part: str, record: dict) -> bool:
        return self.gov.create(f"{EPISODES}/{key}.{part}.json", {**record, "at": now_iso()})

    def uri(self, key: str) -> str:
        return self.gov.uri_of(f"{EPISODES}/{key}.json")


def episode_age_s(episode: dict, now) -> float:
    return (now - parse_time(episode["claimed_at"])).total_seconds()
