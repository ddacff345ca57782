"""``mlops manifests | compile | submit | schedule``: the verbs that talk to a cluster.

Nothing heavy is imported at module level: ``compile``, ``submit`` and ``schedule`` set the
compile-time settings (``components.settings``) from their options before anything imports
the components, so this module must not import them either.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path

from components.cli.common import OptionError

#: Option -> environment variable read by components.settings at import.
COMPILE_SETTINGS = {
    "image": "MLOPS_COMPONENT_IMAGE",
    "predictor_image": "MLOPS_PREDICTOR_IMAGE",
    "storage_secret": "MLOPS_STORAGE_SECRET",
    "storage_secret_keys": "MLOPS_STORAGE_SECRET_KEYS",
    "s3_endpoint": "MLOPS_S3_ENDPOINT",
    "trials": "MLOPS_HPO_SLOTS",
    "accelerator": "MLOPS_ACCELERATOR_TYPE",
    "accelerator_count": "MLOPS_ACCELERATOR_COUNT",
    "trainer_nodes": "MLOPS_TRAINER_NODES",
    "trials_on_trainer": "MLOPS_TRIALS_ON_TRAINER",
    "node_selector": "MLOPS_NODE_SELECTOR",
    "toleration": "MLOPS_TOLERATIONS",
}

#: A Kubernetes extended resource name, e.g. nvidia.com/gpu: an optional DNS subdomain prefix
#: and a qualified name (apimachinery validation.IsQualifiedName).
_RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def add_commands(sub) -> None:
    """Adds the cluster verbs to the top-level subparsers."""
    man = sub.add_parser("manifests",
                         help="write manifests/ (kustomize base, one overlay per install mode)")
    man.add_argument("--out", default="manifests", help="folder to write")
    man.add_argument("--namespace", default=None,
                     help="namespace of the InferenceServices (default: per install mode, "
                          "kubeflow-user-example-com multi-user, kubeflow standalone)")
    man.add_argument("--pipeline-service-account", default=None,
                     help="service account pipeline pods run as (default: default-editor "
                          "multi-user, pipeline-runner standalone)")
    man.add_argument("--pipeline-namespace", default=None,
                     help="its namespace (default: the serving namespace multi-user, kubeflow "
                          "standalone)")
    man.add_argument("--s3-endpoint", default="http://seaweedfs.kubeflow:8333",
                     help="S3 endpoint the predictor downloads packages from (KFP 2.16's "
                          "SeaweedFS; http://minio-service.kubeflow:9000 before 2.16)")
    man.add_argument("--predictor-service-account", default="pet-classifier-predictor",
                     help="the predictor's ServiceAccount (the pipeline's "
                          "predictor_service_account)")
    man.add_argument("--s3-secret", default="pet-classifier-s3",
                     help="the predictor's S3 Secret (the pipeline's predictor_secret)")
    man.add_argument("--gateway-namespace", action="append", default=None,
                     help="namespace of a hop the pipeline's probes come through "
                          "(repeatable; default: istio-system and knative-serving)")
    man.add_argument("--no-prometheus-operator", "--no-prometheus-rule", action="store_true",
                     dest="no_prometheus_rule",
                     help="leave the governance PrometheusRule and the predictor's PodMonitor "
                          "out of the base (for a cluster without the Prometheus Operator's "
                          "monitoring.coreos.com CRDs, which a stock Kubeflow install does not "
                          "have)")
    man.set_defaults(func=cmd_manifests)

    comp = sub.add_parser("compile", help="compile pipelines to KFP IR YAML for the Kubeflow UI")
    comp.add_argument("--out", default="compiled", help="folder to write")
    _compile_options(comp)
    comp.add_argument("pipelines", nargs="*", help="pipeline names (default: all)")
    comp.set_defaults(func=cmd_compile)

    for name, helptext, func in (
            ("submit", "start a pipeline run on a Kubeflow Pipelines API", cmd_submit),
            ("schedule", "create a recurring run (cron) on a Kubeflow Pipelines API",
             cmd_schedule)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("pipeline", help="a registered pipeline name (mlops compile lists them)")
        p.add_argument("--host", required=True,
                       help="KFP API, e.g. http://localhost:8080 (port-forwarded ml-pipeline-ui)"
                            " or https://kubeflow.example.com/pipeline")
        p.add_argument("--namespace", default=None,
                       help="the profile namespace to run in (multi-user Kubeflow)")
        p.add_argument("--experiment", default="pet-classifier", help="experiment name")
        p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a pipeline parameter, repeatable; converted to the parameter's "
                            "declared type (strings stay strings)")
        p.add_argument("--token", default=None,
                       help="bearer token (e.g. `kubectl create token default-editor -n NS`);"
                            " or set KF_PIPELINES_TOKEN")
        p.add_argument("--token-file", default=None, help="file holding the bearer token")
        p.add_argument("--cookies", default=None,
                       help="session cookie of a multi-user deployment behind Dex/oauth2-proxy,"
                            " e.g. 'oauth2_proxy_kubeflow=…'; or set KF_PIPELINES_COOKIES")
        p.add_argument("--service-account", default=None,
                       help="service account of the run's pods (default: the API server's)")
        _compile_options(p)
        if name == "submit":
            p.add_argument("--run-name", default=None, help="run name (default: generated)")
        else:
            p.add_argument("--cron", required=True,
                           help="cron schedule; 5 fields (min hour dom mon dow) or KFP's 6 "
                                "(with seconds first), e.g. '0 */6 * * *'")
            p.add_argument("--job-name", default=None,
                           help="recurring run name (default: <pipeline>-schedule)")
            p.add_argument("--max-concurrency", type=int, default=1,
                           help="runs of this schedule at the same time")
            p.add_argument("--catchup", action="store_true",
                           help="run the intervals missed while paused (default: no catch-up)")
        p.set_defaults(func=func)


def _compile_options(p) -> None:
    p.add_argument("--image", default=None,
                   help="component image (default: ghcr.io/pet-park-mlops/mlops-workflow:"
                        "<version>)")
    p.add_argument("--predictor-image", default=None,
                   help="default of the pipelines' predictor_image parameter")
    p.add_argument("--storage-secret", default=None,
                   help="Secret with the components' S3 keys (default: KFP's own, "
                        "mlpipeline-minio-artifact)")
    p.add_argument("--storage-secret-keys", default=None,
                   help="its keys as KEY=ENV,… (default: accesskey=AWS_ACCESS_KEY_ID,"
                        "secretkey=AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--s3-endpoint", dest="s3_endpoint", default=None,
                   help="AWS_ENDPOINT_URL of every task (default: http://seaweedfs.kubeflow:"
                        "8333; '' to take it from the Secret)")
    p.add_argument("--trials", type=int, default=None,
                   help="hyperparameter-search trial slots in the training pipeline (default: 4)")
    p.add_argument("--accelerator", default=None, metavar="TYPE",
                   help="accelerator of the search trials and the final training, e.g. "
                        "nvidia.com/gpu (default: none, CPU)")
    p.add_argument("--accelerator-count", type=int, default=None, metavar="N",
                   help="accelerators per training pod, or per TrainJob node (default: 1)")
    p.add_argument("--trainer-nodes", type=int, default=None, metavar="N",
                   help="nodes of the final training: above 1 it runs as a Kubeflow Trainer "
                        "TrainJob (torch-distributed runtime) (default: 1, the task's pod)")
    p.add_argument("--trials-on-trainer", action="store_true", default=None,
                   help="run the search trials as TrainJobs too, of --trainer-nodes nodes "
                        "each (needs --trainer-nodes above 1)")
    p.add_argument("--node-selector", default=None, metavar="KEY=VALUE,…",
                   help="node selector of the training pods (kfp-kubernetes)")
    p.add_argument("--toleration", default=None, metavar="KEY[=VALUE]:EFFECT,…",
                   help="tolerations of the training pods, e.g. nvidia.com/gpu:NoSchedule")


def _apply_compile_settings(args) -> None:
    """Sets the compile-time settings; they must be set before the components are imported."""
    wanted = {env: getattr(args, opt) for opt, env in COMPILE_SETTINGS.items()
              if getattr(args, opt, None) is not None}
    if "trials" in vars(args) and args.trials is not None and args.trials < 1:
        raise OptionError(f"Invalid --trials {args.trials}. Expect 1 or more.")
    for opt in ("accelerator_count", "trainer_nodes"):
        if getattr(args, opt, None) is not None and getattr(args, opt) < 1:
            raise OptionError(f"Invalid --{opt.replace('_', '-')} {getattr(args, opt)}. "
                              "Expect 1 or more.")
    accelerator = getattr(args, "accelerator", None)
    if accelerator is not None and not _RESOURCE_NAME.match(accelerator):
        raise OptionError(f"Invalid --accelerator {accelerator!r}. Expect a Kubernetes "
                          "extended resource name, e.g. nvidia.com/gpu or amd.com/gpu.")
    if getattr(args, "accelerator_count", None) is not None and not (
            accelerator or os.environ.get("MLOPS_ACCELERATOR_TYPE")):
        raise OptionError(f"--accelerator-count {args.accelerator_count} needs --accelerator "
                          "TYPE (e.g. --accelerator nvidia.com/gpu); without it the training "
                          "pods ask for no accelerator.")
    if getattr(args, "trials_on_trainer", None):
        nodes = args.trainer_nodes or int(os.environ.get("MLOPS_TRAINER_NODES", "1") or 1)
        if nodes < 2:
            raise OptionError("--trials-on-trainer needs --trainer-nodes N with N above 1 "
                              f"(nodes of each trial's TrainJob); got {nodes}.")
    if "components.settings" in sys.modules:
        import components.settings as settings

        current = {"MLOPS_COMPONENT_IMAGE": settings.COMPONENT_IMAGE,
                   "MLOPS_PREDICTOR_IMAGE": settings.PREDICTOR_IMAGE,
                   "MLOPS_STORAGE_SECRET": settings.STORAGE_SECRET,
                   "MLOPS_S3_ENDPOINT": settings.S3_ENDPOINT,
                   "MLOPS_HPO_SLOTS": str(settings.HPO_SLOTS)}
        if any(env in current and str(value) != current[env] for env, value in wanted.items()):
            raise SystemExit("compile settings must be set before the components are "
                             "imported; run the command alone.")
    for env, value in wanted.items():
        os.environ[env] = str(value)
    if "components.settings" not in sys.modules:  # the values just set, checked before work
        import components.settings as settings  # deferred: read after the options set them

        settings.node_selector()
        settings.tolerations()


def cmd_manifests(args) -> int:

    from components.common.k8s import ManifestOptions, render_manifests

    # Kubernetes names: a namespace is an RFC 1123 label, a ServiceAccount or Secret a
    # subdomain (kubernetes apimachinery validation.IsDNS1123Label / IsDNS1123Subdomain).
    label = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    subdomain = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    for option, value, rule in (
            ("--namespace", args.namespace, label),
            ("--pipeline-namespace", args.pipeline_namespace, label),
            ("--pipeline-service-account", args.pipeline_service_account, subdomain),
            ("--predictor-service-account", args.predictor_service_account, subdomain),
            ("--s3-secret", args.s3_secret, subdomain),
            *(("--gateway-namespace", g, label) for g in args.gateway_namespace or ())):
        if value is not None and not rule.match(value):
            raise OptionError(f"{option} {value!r}: expected a Kubernetes name (lowercase "
                              "letters, digits and '-', starting and ending with a letter or "
                              "digit; at most 63 characters for a namespace).")
    options = ManifestOptions(
        namespace=args.namespace, pipeline_service_account=args.pipeline_service_account,
        pipeline_namespace=args.pipeline_namespace, s3_endpoint=args.s3_endpoint,
        predictor_service_account=args.predictor_service_account, s3_secret=args.s3_secret,
        gateway_namespaces=tuple(args.gateway_namespace or ("istio-system",
                                                            "knative-serving")),
        pod_monitor=not args.no_prometheus_rule)
    # The governance step's alerting rules, built from its default policy.
    from components.govern.policy import load_policy
    from components.govern.rules import prometheus_rule, rule_yaml

    extra = {} if args.no_prometheus_rule else {
        "prometheus-rule.yaml": rule_yaml(prometheus_rule(load_policy()))}
    for rel, text in render_manifests(options, extra_base_files=extra).items():
        path = Path(args.out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    for mode in ("multi-user", "standalone"):
        values = options.for_mode(mode)
        print(f"{mode}: kubectl apply -k {Path(args.out) / 'overlays' / mode}  (namespace "
              f"{values['namespace']}, pipeline pods as {values['pipeline_namespace']}/"
              f"{values['pipeline_service_account']})")
        if values["pipeline_namespace"] != values["namespace"]:
            # TrainJobs (--trainer-nodes) are created in the pipeline pods' own namespace.
            ns, sa = values["pipeline_namespace"], values["pipeline_service_account"]
            print(f"  for --trainer-nodes, also in {ns}: kubectl -n {ns} create role "
                  "pet-classifier-trainer --verb=get,list,watch,create,delete "
                  "--resource=trainjobs.trainer.kubeflow.org && kubectl -n "
                  f"{ns} create rolebinding pet-classifier-trainer --role="
                  f"pet-classifier-trainer --serviceaccount={ns}:{sa}")
    if not (Path(args.out) / "base" / "s3.env").exists():
        print(f"Fill {Path(args.out) / 'base' / 's3.env'} from s3.env.example before applying.")
    return 0


def cmd_compile(args) -> int:
    _apply_compile_settings(args)
    from pipelines import PIPELINES
    from pipelines.local import compile_all

    unknown = [p for p in args.pipelines if p not in PIPELINES]
    if unknown:
        raise OptionError(f"Unknown pipeline(s) {unknown}. Expect some of {sorted(PIPELINES)}.")
    for path in compile_all(args.out, args.pipelines or None):
        print(f"compiled {path}")
    return 0


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def typed_arguments(pipeline, items: list[str]) -> dict:
    """``NAME=VALUE`` strings as the values the pipeline's parameters declare.

    A ``String`` parameter keeps the text as given (``search_space='{"lr": [0.1]}'`` stays
    JSON text, ``canary_steps=50`` stays ``"50"``); ``Integer``, ``Float`` and ``Boolean`` are
    converted and checked; ``List``/``Dict`` parameters are read as JSON.

    Raises:
        ValueError: Naming the argument, the value and what was expected.
    """
    inputs = pipeline.component_spec.inputs or {}
    out = {}
    for item in items:
        if "=" not in item:
            raise OptionError(f"Invalid --arg {item!r}. Expect NAME=VALUE.")
        name, value = item.split("=", 1)
        if name not in inputs:
            raise OptionError(f"Unknown parameter {name!r} of pipeline "
                              f"{pipeline.name!r}. Expect one of {sorted(inputs)}.")
        kind = str(inputs[name].type)
        try:
            if kind == "Integer":
                out[name] = int(value)
            elif kind == "Float":
                out[name] = float(value)
            elif kind == "Boolean":
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(value)
                out[name] = value.lower() in _TRUE
            elif kind in ("List", "Dict"):
                out[name] = json.loads(value)
            elif kind == "String":
                out[name] = value
            else:
                raise ValueError(f"parameter of type {kind} cannot be given on the command "
                                 "line")
        except (ValueError, json.JSONDecodeError) as exc:
            raise OptionError(f"Invalid --arg {name}={value!r}: the parameter is {kind} "
                              f"({exc}).") from exc
    missing = sorted(n for n, spec in inputs.items()
                     if spec.default is None and not spec.optional and n not in out)
    if missing:
        raise OptionError(f"Pipeline {pipeline.name!r} needs --arg for {', '.join(missing)}.")
    return out


def _client(args):
    import kfp

    token = args.token or os.environ.get("KF_PIPELINES_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    cookies = args.cookies or os.environ.get("KF_PIPELINES_COOKIES")
    # One plain request first: kfp.Client's own health check retries five times with pauses
    # and then reports a timeout, whatever the cause (a 403 from the auth proxy included).
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if cookies:
        headers["Cookie"] = cookies
    try:
        r = requests.get(f"{args.host.rstrip('/')}/apis/v2beta1/healthz", headers=headers,
                         timeout=30)
    except requests.RequestException as exc:
        print(f"error: cannot reach the Kubeflow Pipelines API at {args.host}: {exc}. Check "
              "--host (port-forward svc/ml-pipeline-ui, or the Kubeflow URL with /pipeline).",
              file=sys.stderr)
        return None
    if r.status_code in (401, 403) or (r.status_code == 200 and "json" not in
                                       r.headers.get("Content-Type", "")):
        print(f"error: the Kubeflow Pipelines API at {args.host} wants you to log in (HTTP "
              f"{r.status_code}). {_AUTH_HINT}", file=sys.stderr)
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # "only works with v2"
        return kfp.Client(host=args.host, namespace=args.namespace or "kubeflow",
                          existing_token=token or None, cookies=cookies or None)


_AUTH_HINT = ("Authenticate with --token (a Kubernetes service-account token your "
              "Kubeflow accepts, e.g. `kubectl -n NAMESPACE create token default-editor`) or "
              "--cookies (the session cookie of a browser login), and pass --namespace of "
              "your profile.")


def _kfp_call(args, what: str, fn):
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        return fn()
    except ApiException as exc:
        hint = ""
        if exc.status in (401, 403):
            hint = " " + _AUTH_HINT
        elif exc.status == 400:
            hint = " Check the --arg values against the pipeline's parameters."
        print(f"error: the Kubeflow Pipelines API at {args.host} refused to {what}: HTTP "
              f"{exc.status} {exc.reason}: {(exc.body or '')[:500]}.{hint}", file=sys.stderr)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        print(f"error: cannot reach the Kubeflow Pipelines API at {args.host} to {what}: "
              f"{exc}. Check --host (port-forward svc/ml-pipeline-ui, or the Kubeflow URL "
              "with /pipeline).", file=sys.stderr)
    return None


def _prepare(args):
    _apply_compile_settings(args)
    from pipelines import PIPELINES, load

    if args.pipeline not in PIPELINES:
        raise OptionError(f"Unknown pipeline {args.pipeline!r}. Expect one of "
                          f"{sorted(PIPELINES)}.")
    pipeline = load(args.pipeline)
    return pipeline, typed_arguments(pipeline, args.arg)


def cmd_submit(args) -> int:
    pipeline, arguments = _prepare(args)
    client = _client(args)
    if client is None:
        return 1
    run = _kfp_call(args, "create the run", lambda: client.create_run_from_pipeline_func(
        pipeline, arguments=arguments, run_name=args.run_name,
        experiment_name=args.experiment, namespace=args.namespace,
        service_account=args.service_account))
    if run is None:
        return 1
    print(f"Submitted run {run.run_id} of {args.pipeline} to {args.host}")
    return 0


def kfp_cron(expr: str) -> str:
    """A cron expression as KFP's scheduler reads it (6 fields, seconds first)."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise OptionError(f"Invalid --cron {expr!r}. Expect 5 fields (minute hour day month "
                          "weekday), e.g. '0 */6 * * *'.")
    return " ".join(fields)


def cmd_schedule(args) -> int:
    import tempfile

    from kfp import compiler

    cron = kfp_cron(args.cron)
    if args.max_concurrency < 1:
        raise OptionError(f"Invalid --max-concurrency {args.max_concurrency}. Expect 1 or more.")
    pipeline, arguments = _prepare(args)
    client = _client(args)
    if client is None:
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, f"{args.pipeline}.yaml")
        compiler.Compiler().compile(pipeline, package)
        experiment = _kfp_call(args, "create the experiment", lambda: client.create_experiment(
            args.experiment, namespace=args.namespace))
        if experiment is None:
            return 1
        job = _kfp_call(args, "create the recurring run", lambda: client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=args.job_name or f"{args.pipeline}-schedule", cron_expression=cron,
            max_concurrency=args.max_concurrency, no_catchup=not args.catchup,
            params=arguments, pipeline_package_path=package, enabled=True,
            service_account=args.service_account))
    if job is None:
        return 1
    print(f"Scheduled {args.pipeline} as recurring run {job.recurring_run_id} ('{cron}', at "
          f"most {args.max_concurrency} at a time, "
          f"{'with' if args.catchup else 'no'} catch-up) on {args.host}")
    return 0
