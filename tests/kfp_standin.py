"""A loopback stand-in of the Kubeflow Pipelines v2beta1 REST API (experiments and runs),
enough for ``kfp.Client.create_run_from_pipeline_package`` and ``get_run``.

It keeps the rules of the v2beta1 run API (kubeflow/pipelines backend/api/v2beta1/run.proto
and experiment.proto): a run needs a display name, exactly one of ``pipeline_spec`` and
``pipeline_version_reference``, an existing experiment; every runtime parameter must be an
input of the pipeline's root; an answer is 400 with ``{"error", "code", "message"}``
otherwise, which the client raises as ``ApiException``. A pipeline with a Kubernetes platform
spec arrives as ``{"pipeline_spec": …, "platform_spec": …}``, as the KFP client sends it.
Recurring runs (``mlops schedule``) are recorded and answered, not validated.

Every request is recorded with its credentials (``requests``, ``posted``). With
``deny_without_auth``, a request that carries neither a bearer token nor a cookie is refused
with 403, as the authorisation in front of a multi-user deployment refuses it.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class KfpStandIn:
    """The stand-in, serving on 127.0.0.1 from construction until :meth:`stop`.

    Args:
        multi_user: What ``/healthz`` says (``kfp.Client`` reads the namespace from the pod
            when it is true and none was given).
        deny_without_auth: Refuse every request without ``Authorization`` or ``Cookie``.
    """

    def __init__(self, multi_user: bool = False, deny_without_auth: bool = False):
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        #: ``{"method", "path", "authorization", "cookie", "body"}`` of every request.
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, message):
                self._send(400, {"error": message, "code": 3, "message": message})

            def _record(self, method, body):
                outer.requests.append({"method": method, "path": urlparse(self.path).path,
                                       "authorization": self.headers.get("Authorization"),
                                       "cookie": self.headers.get("Cookie"), "body": body})
                if deny_without_auth and not (self.headers.get("Authorization")
                                              or self.headers.get("Cookie")):
                    self._send(403, {"error": "RBAC: access denied", "code": 7})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if not self._record("GET", None):
                    return None
                if url.path == "/apis/v2beta1/healthz":
                    return self._send(200, {"multi_user": multi_user})
                if url.path == "/apis/v2beta1/experiments":
                    flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
                    names = [p.get("string_value", p.get("stringValue"))
                             for p in flt.get("predicates", [])]
                    found = [e for e in outer.experiments.values()
                             if not names or e["display_name"] in names]
                    return self._send(200, {"experiments": found, "total_size": len(found)}
                                      if found else {})
                if url.path.startswith("/apis/v2beta1/runs/"):
                    run = outer.runs.get(url.path.rsplit("/", 1)[1])
                    if run is None:
                        return self._send(404, {"error": "run not found", "code": 5})
                    return self._send(200, run)
                self._send(404, {"error": f"no route {url.path}", "code": 5})

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._record("POST", body):
                    return None
                if url.path == "/apis/v2beta1/experiments":
                    if not body.get("display_name"):
                        return self._error("Experiment display name is empty")
                    exp = {**body, "experiment_id": str(uuid.uuid4()),
                           "created_at": "2026-11-23T00:00:00Z", "storage_state": "AVAILABLE"}
                    outer.experiments[exp["experiment_id"]] = exp
                    return self._send(200, exp)
                if url.path == "/apis/v2beta1/runs":
                    return outer._create_run(self, body)
                if url.path == "/apis/v2beta1/recurringruns":
                    job = {**body, "recurring_run_id": str(uuid.uuid4())}
                    outer.recurring_runs[job["recurring_run_id"]] = job
                    return self._send(200, job)
                self._send(404, {"error": f"no route {url.path}", "code": 5})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _create_run(self, handler, body):
        if not body.get("display_name"):
            return handler._error("Run display name is empty")
        if bool(body.get("pipeline_spec")) == bool(body.get("pipeline_version_reference")):
            return handler._error("Exactly one of pipeline_spec and pipeline_version_reference "
                                  "is required")
        if body.get("experiment_id") not in self.experiments:
            return handler._error(f"Experiment {body.get('experiment_id')} not found")
        spec = body.get("pipeline_spec") or {}
        if "pipeline_spec" in spec:  # with a platform spec, the client sends both, wrapped
            spec = spec["pipeline_spec"]
        inputs = (spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
        params = (body.get("runtime_config") or {}).get("parameters", {})
        unknown = sorted(set(params) - set(inputs))
        if unknown:
            return handler._error(f"Unknown runtime parameters {unknown}: not inputs of the "
                                  "pipeline")
        run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING",
               "created_at": "2026-11-23T00:00:00Z"}
        self.runs[run["run_id"]] = run
        return handler._send(200, run)

    def posted(self, prefix: str) -> dict:
        """The first POST to a path that starts with ``prefix``, as recorded."""
        return next(r for r in self.requests if r["method"] == "POST" and
                    r["path"].startswith(prefix))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
