"""Every patch of KServe's internals, in one module that checks the KServe it runs on.

The predictor uses KServe's extension points where they exist: ``Model.preprocess`` /
``predict`` / ``postprocess`` (``predictor.py``), exception handlers and an ASGI middleware
(``guard.py``), a strict V2 body reader (``v2_compat.py``). What KServe 0.20 offers no
extension point for is changed here, and only here:

- :func:`configure_rest_app`: ``RESTServer.create_application`` calls a function of the
  predictor's with the app KServe built (the guard is installed that way, in every serving
  process, ``--workers`` children included);
- :func:`remove_routes`: KServe always registers its model repository API (load, unload);
- :func:`truthful_readiness`: KServe's ``DataPlane.ready`` answers True whatever the models say;
- :func:`without_extension`: the server metadata lists the repository extension regardless;
- :func:`decode_raw_v2_bodies_with`: ``DataPlane.decode_inference_request`` for raw V2 bodies;
- :func:`raw_infer_input`: an ``InferInput`` over binary data, read by ``numpy.frombuffer``
  (KServe keeps it in a private attribute);
- :func:`configure_uvicorn`: KServe 0.20's REST server always binds 0.0.0.0 and gives
  uvicorn no protocol class and no keep-alive setting of ours;
- :func:`trim_request_path`: per-request logging, CPU timing and the event loop.

Each was written against KServe :data:`SUPPORTED_KSERVE` and reaches into code that may
change with any release; importing this module with another KServe installed fails with
:class:`UnsupportedKServe` rather than let a patch fail silently or half-apply.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import logging
import os
import time
import warnings
from collections.abc import Callable

import kserve
import kserve.logging
import kserve.model_server
import timing_asgi.middleware
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput
from kserve.protocol.rest import server as rest

from components.common.errors import MlopsError

SUPPORTED_KSERVE = "0.20.0"
"""The KServe release every patch here was written and tested against (setup.cfg pins it)."""


class UnsupportedKServe(MlopsError, ImportError):
    """The installed KServe is not the one these patches were written for."""


def installed_kserve() -> str:
    """The installed KServe's version (0.20 has no ``kserve.__version__``; its package
    metadata says it)."""
    return getattr(kserve, "__version__", None) or importlib.metadata.version("kserve")


def check_kserve(version: str) -> None:
    """Raises :class:`UnsupportedKServe` unless ``version`` is :data:`SUPPORTED_KSERVE`."""
    if version != SUPPORTED_KSERVE:
        raise UnsupportedKServe(
            f"components/serve/kserve_patches.py patches internals of KServe "
            f"{SUPPORTED_KSERVE}, but kserve {version} is installed. Install "
            f"kserve=={SUPPORTED_KSERVE} (pip install 'mlops-workflow[serve]'), or check each "
            "patch in that module against the new release and then raise SUPPORTED_KSERVE.")


check_kserve(installed_kserve())


# ---- the REST application ---------------------------------------------------------------------


def configure_rest_app(configure: Callable[[object, rest.RESTServer], None]) -> None:
    """Makes ``RESTServer.create_application`` call ``configure(app, server)`` once KServe has
    built its FastAPI app, in every process that serves (idempotent: the last ``configure``
    wins)."""
    original = getattr(rest.RESTServer.create_application, "unconfigured",
                       rest.RESTServer.create_application)

    def create_application(self):
        original(self)
        configure(kserve.model_server.app, self)

    create_application.unconfigured = original
    rest.RESTServer.create_application = create_application


def remove_routes(app, prefix: str) -> None:
    """Takes every route under ``prefix`` out of a built app."""
    app.router.routes = [r for r in app.router.routes
                         if not getattr(r, "path", "").startswith(prefix)]


def truthful_readiness(dataplane: DataPlane) -> None:
    """Server readiness says whether every registered model is ready (KServe's answers True
    whatever the models say)."""
    registry = dataplane.model_registry

    async def ready() -> bool:
        models = registry.get_models()
        return bool(models) and all(getattr(m, "ready", False) for m in models.values())

    dataplane.ready = ready


def without_extension(dataplane: DataPlane, extension: str) -> None:
    """The server metadata (``GET /v2``) without ``extension`` in its list."""
    metadata = dataplane.metadata

    def server_metadata() -> dict:
        meta = dict(metadata())
        meta["extensions"] = [e for e in meta.get("extensions", []) if e != extension]
        return meta

    dataplane.metadata = server_metadata


# ---- V2 bodies -------------------------------------------------------------------------------


def decode_raw_v2_bodies_with(decode: Callable[[bytes, dict, str], object]) -> None:
    """Routes KServe's decoding of a raw (bytes) V2 REST body through
    ``decode(body, headers, model_name)``; other bodies keep KServe's decoding (idempotent)."""
    original = getattr(DataPlane.decode_inference_request, "undecoded",
                       DataPlane.decode_inference_request)

    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes):
            return decode(body, headers, model_name)
        return original(self, body, headers, model_name)

    decode_inference_request.undecoded = original
    DataPlane.decode_inference_request = decode_inference_request


def raw_infer_input(name: str, shape: list[int], datatype: str, data: bytes,
                    parameters: dict | None) -> InferInput:
    """An input whose tensor is ``data`` as sent (binary-data extension), read with
    ``numpy.frombuffer`` by ``InferInput.as_numpy``, never converted through lists."""
    infer_input = InferInput(name, shape, datatype, None, parameters)
    infer_input._raw_data = data
    return infer_input


# ---- the server process ----------------------------------------------------------------------


def configure_uvicorn(host: str, http_protocol=None, keepalive_timeout_s: float | None = None
                      ) -> None:
    """Sets what KServe 0.20's REST server gives uvicorn no option for: the address to bind
    (KServe always binds 0.0.0.0), the HTTP protocol class that reads each connection
    (``edge.BoundedHttpProtocol``: uvicorn's ``Config(http=...)`` takes a class) and the
    keep-alive timeout (KServe's default is 65 s).

    Both of KServe's servers (one process, or the ``--workers`` parent that binds the socket
    its children share and sends them its ``uvicorn.Config``) take these from the config their
    ``RESTServer`` builds, so ``http_protocol`` must pickle (a module-level class, or a
    ``functools.partial`` of one).
    """
    check_uvicorn(installed_uvicorn())
    original = getattr(rest.RESTServer.__init__, "wrapped", rest.RESTServer.__init__)

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.config.host = host
        if http_protocol is not None:
            self.config.http = http_protocol
        if keepalive_timeout_s is not None:
            self.config.timeout_keep_alive = keepalive_timeout_s

    __init__.wrapped = original
    rest.RESTServer.__init__ = __init__


SUPPORTED_UVICORN = "0.54."
"""The uvicorn releases whose httptools protocol ``edge.BoundedHttpProtocol`` extends (it
reads the parser, the request cycle and the connection set of uvicorn's protocol)."""


def installed_uvicorn() -> str:
    return importlib.metadata.version("uvicorn")


def check_uvicorn(version: str) -> None:
    """Raises :class:`UnsupportedKServe` unless ``version`` is a :data:`SUPPORTED_UVICORN`
    release (the bounded protocol relies on uvicorn's internals)."""
    if not version.startswith(SUPPORTED_UVICORN):
        raise UnsupportedKServe(
            f"components/serve/edge.py extends the HTTP protocol of uvicorn "
            f"{SUPPORTED_UVICORN}x, KServe's HTTP server, but uvicorn {version} is installed. "
            f"Install uvicorn[standard]=={SUPPORTED_UVICORN}* (pip install "
            "'mlops-workflow[serve]'), or check BoundedHttpProtocol against the new release "
            "and then change SUPPORTED_UVICORN.")


def trim_request_path(log_each_request: bool, workers: int = 1) -> None:
    """Takes out per-request work of KServe 0.20's REST server that a camera-rate server
    should not pay for. Call before ``ModelServer(...)``.

    - Logging. Every route is wrapped in a timing middleware that logs two ``kserve.trace``
      lines per request whatever ``enable_latency_logging`` says, and uvicorn logs an access
      line. Unless ``log_each_request``, both loggers are set to WARNING here, and in the
      ``--workers`` child processes through the logging configuration KServe applies there
      (its ``log_config_file`` accepts a dict).
    - The same middleware measures process CPU time with ``getrusage`` twice per request; a
      profile of the server under load on a 2-core VM, with ONNX Runtime's threads running,
      found a fifth of the server's samples in those calls. When
      the lines are not logged, the measurement is wall clock only (this process; workers
      started by ``--workers`` keep KServe's middleware as it is).
    - FastAPI re-emits a deprecation warning for KServe's ``ORJSONResponse`` on every call.
    - KServe's single-process server runs uvicorn inside ``asyncio.run``, so uvicorn's own
      choice of uvloop never happens; uvloop is installed here when it is importable.
    """
    ignore = "ignore:ORJSONResponse is deprecated"
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    # Spawned --workers children start a fresh interpreter; the environment reaches them.
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS", ""), ignore]))
    if not log_each_request:
        config = copy.deepcopy(kserve.logging.KSERVE_LOG_CONFIG)
        for name in ("kserve.trace", "uvicorn.access"):
            config["loggers"][name]["level"] = "WARNING"
            logging.getLogger(name).setLevel(logging.WARNING)
        if workers > 1:
            kserve.model_server.args.log_config_file = config
        _time_requests_by_wall_clock_only()
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # KServe asks for the current loop before its asyncio.run(); uvloop does not make one.
    asyncio.set_event_loop(asyncio.new_event_loop())


def _time_requests_by_wall_clock_only() -> None:
    class WallClockTimingStats(timing_asgi.middleware.TimingStats):
        def start(self):
            self.start_time, self.start_cpu_time = time.time(), 0.0

        def stop(self):
            self.end_time, self.end_cpu_time = time.time(), 0.0

    timing_asgi.middleware.TimingStats = WallClockTimingStats
