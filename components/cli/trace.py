"""``mlops trace REQUEST_ID``: a served answer traced through the stores to everything behind
it (capture, model version, dataset, lake keys, code, parameters, pipeline run, the verdicts
and alerts of its window, its label)."""

from __future__ import annotations

import json

from components.common.paths import mlops_home


def add_commands(sub) -> None:
    home = mlops_home()
    p = sub.add_parser("trace", help="where an answer came from: request -> capture -> model "
                                     "-> data -> code -> run -> monitoring -> label")
    p.add_argument("request_id", help="the request id `mlops deploy predict` printed "
                                      "(the server's: V1 request_id, V2 "
                                      "parameters.request_id)")
    p.add_argument("--model", default="pet-classifier", help="registered model name")
    p.add_argument("--store", default="",
                   help="monitoring store URI (default: $MLOPS_MONITORING_URI, else "
                        "$MLOPS_HOME/monitoring)")
    p.add_argument("--registry", default=str(home / "registry"), help="model registry URI")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=_cmd_trace)


def _cmd_trace(args) -> int:
    from components.govern.trace import trace_request
    from components.monitor.capture import default_capture_uri

    result = trace_request(args.request_id, args.model, args.store or default_capture_uri(),
                           args.registry)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for item in result["instances"]:
        lin, lake = item["lineage"], item.get("lake") or {}
        probability = (item.get("probabilities") or {}).get(item["answer"])
        sure = f" ({probability:.3f})" if isinstance(probability, float) else ""
        print(f"request {result['request_id']}/{item['index']}: answered {item['answer']}"
              f"{sure} by {result['model']} version {item['model_version']}")
        print(f"  captured      {item['capture']}")
        if item.get("context"):
            sent = item.get("sent_context")
            print(f"  context       {item['context']}"
                  + (f" (the camera said {sent}; the image decides)" if sent
                     and sent != item["context"] else ""))
        print(f"  input image   {item['image'] or 'not sampled (MLOPS_CAPTURE_IMAGE_RATE)'}")
        if lin.get("error"):
            print(f"  model         {lin['error']}")
            continue
        print(f"  model         {lin.get('uri')}")
        print(f"  dataset       {lin.get('dataset_version')} from {lin.get('dataset_source')}")
        same = lake.get("same_photo") or []
        print(f"  lake keys     {lake.get('keys', '?')} images {lake.get('classes', {})} in "
              f"{lin.get('dataset_manifest')}"
              + (f"; this photo was trained on as {same[0]}" if same else ""))
        print(f"  code          {lin.get('code_version')}")
        print(f"  parameters    {json.dumps(lin.get('hyperparameters'), sort_keys=True)}")
        print(f"  pipeline run  {lin.get('pipeline_run')}")
        if lin.get("trigger"):
            print(f"  retrained by  {json.dumps(lin['trigger'], default=str)[:200]}")
        if not item["verdicts"]:
            print("  monitoring    no verdict of its window yet (`mlops monitor run`)")
        for v in item["verdicts"]:
            alarms = f"; alarms: {', '.join(v['alarms'])}" if v["alarms"] else ""
            if v.get("other_contexts_alarmed"):
                alarms += (f"; alarms in the {', '.join(v['other_contexts_alarmed'])} images, "
                           "not this one's")
            print(f"  monitoring    verdict {v['run_id']}: {v['status']}{alarms} "
                  f"({v['report'] or v['uri']})")
            for a in v["alerts"]:
                print(f"  alert         #{a['seq']} {a['status']}: {a['summary']}")
        label = item["label"]
        print("  label         " + (
            f"{label['label']} by {label['by']} at {str(label['at'])[:19]} "
            f"({'right' if label['correct'] else 'WRONG'})" if label else
            f"none yet (`mlops monitor label {result['request_id']} CLASS`)"))
    return 0
