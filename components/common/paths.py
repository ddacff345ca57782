"""Where the local stores live when no URI is given."""

from __future__ import annotations

import os
from pathlib import Path


def mlops_home(cwd: str | os.PathLike | None = None) -> Path:
    """The folder of the local stores (datasets, registry, monitoring, deployments, runs).

    ``$MLOPS_HOME`` when set; else the nearest ``.mlops`` folder in the current directory or
    one of its parents (as git finds ``.git``), so commands run inside a project after
    ``make demo`` see the demo's stores; else ``~/.mlops``.
    """
    if os.environ.get("MLOPS_HOME"):
        return Path(os.environ["MLOPS_HOME"]).expanduser().resolve()
    here = Path(cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / ".mlops"
        if candidate.is_dir():
            return candidate
    return (Path.home() / ".mlops").resolve()
