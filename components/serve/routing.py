"""Who may tell a model server which role (stable or canary) served a request.

A model server records the role of each request it captures, and the monitor and the canary
analysis count traffic by it. A client must not choose it: ``X-Model-Revision: canary`` sent
straight to a stable server used to be recorded as canary traffic. The role comes from the
server's own configuration (``--revision``), unless a router in front says otherwise, which it
can only prove by a secret that clients never see: the router sets ``X-Model-Revision`` together
with ``X-Router-Token``, the token of its deployment, after taking both headers out of every
client request. A server started with that token (``$MLOPS_ROUTER_TOKEN``) believes the
router's word; without the token, or with another, the header changes nothing.

The local target makes one token per state folder and gives it, in the environment (never on a
command line, which every user of the machine can read), to the routers and model servers it
starts. A revision's role changes at promotion without a restart, which is why the router's
word beats the process's own.

On a cluster there is no project router: KServe's canary is a split between two Knative
revisions of one predictor, and which of them is the canary is the InferenceService's status,
which changes at promotion without a restart. A pod cannot know its role, but it knows its
revision: Knative sets ``K_REVISION`` in every revision's container. The server records that
name (``knative_revision``), and whoever reads the records maps names to roles with the
InferenceService's status (``KServeTarget.revision_roles``,
``components.monitor.window.record_role``).

Light (no KServe): the router imports it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping

REVISION_HEADER = "X-Model-Revision"
"""The role a router sent a request to (the router also returns it to the client)."""
TOKEN_HEADER = "X-Router-Token"
"""The router's proof that it set :data:`REVISION_HEADER`."""
TOKEN_ENV = "MLOPS_ROUTER_TOKEN"
"""The environment variable that gives routers and model servers their deployment's token."""
ROLES = ("stable", "canary")
KNATIVE_REVISION_ENV = "K_REVISION"
"""The Knative revision a process serves in. Knative Serving sets it in the container of every
revision from the Revision's own name (knative/serving knative-v1.21.1, the release KServe 0.20
pins: pkg/reconciler/revision/resources/env_var.go:26 and :31-35 ``getKnativeEnvVar``, appended
to every container by deploy.go:265 ``makeContainer``, which ``makeServingContainer`` calls at
:291), beside ``K_CONFIGURATION`` and ``K_SERVICE``. The name is reserved: a revision whose spec
sets it is refused (pkg/apis/serving/k8s_validation.go:54-58 ``reservedEnvVars``). A client's
request cannot change it."""


def own_revision(configured: str = "", environ: Mapping[str, str] | None = None
                 ) -> tuple[str, str]:
    """This process's (role, Knative revision name).

    The role is ``configured`` (``--revision``), else ``$MLOPS_REVISION``; without either it is
    ``stable``, except in a Knative revision, whose role only the InferenceService's status
    knows: there it is ``""`` and the revision name (``$K_REVISION``) says who served."""
    environ = os.environ if environ is None else environ
    knative = environ.get(KNATIVE_REVISION_ENV, "")
    role = configured or environ.get("MLOPS_REVISION", "")
    if role and role not in ROLES:
        raise ValueError(f"Invalid revision role {role!r}: expect one of {', '.join(ROLES)}.")
    return role or ("" if knative else "stable"), knative


def new_token() -> str:
    """A fresh token (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def routed_role(headers: Mapping[str, str] | None, token: str | None = None) -> str:
    """The role a router in front says it sent this request to, or ``""`` when no router with
    this server's token said so (``headers`` with lower-case names, as KServe passes them;
    ``token``: default ``$MLOPS_ROUTER_TOKEN``)."""
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    if not token or not headers:
        return ""
    sent = headers.get(TOKEN_HEADER.lower(), "")
    role = headers.get(REVISION_HEADER.lower(), "")
    if role not in ROLES or not hmac.compare_digest(sent.encode(), token.encode()):
        return ""
    return role
