"""``mlops registry …``: list, show, trace, download, alias and approve registered models."""

from __future__ import annotations

import json
import sys

from components.cli.common import OptionError, positive_int
from components.common.paths import mlops_home


def add_commands(sub) -> None:
    reg = sub.add_parser("registry", help="versions, lineage, aliases, approvals, releases")
    reg.add_argument("--registry", default="",
                     help="registry URI (default: $MLOPS_HOME/registry)")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True)
    r = reg_sub.add_parser("list", help="models and versions")
    r.add_argument("model", nargs="?", default="", help="only this model")
    for name, helptext in (("show", "one version"), ("lineage", "a version's lineage as JSON")):
        r = reg_sub.add_parser(name, help=helptext)
        r.add_argument("model", help="registered model name")
        r.add_argument("ref", nargs="?", default="latest", help="N, latest or @alias")
    r = reg_sub.add_parser("download", help="copy a version's files, verifying checksums")
    r.add_argument("model", help="registered model name")
    r.add_argument("ref", nargs="?", default="latest", help="N, latest or @alias")
    r.add_argument("--dest", required=True, help="folder to write the files to")
    r = reg_sub.add_parser("alias", help="point an alias at a version")
    r.add_argument("model", help="registered model name")
    r.add_argument("alias", help="alias name, e.g. staging or production")
    r.add_argument("version", type=positive_int, help="version number")
    r.add_argument("--reason", default="set by hand", help="why, kept in the alias history")
    r = reg_sub.add_parser("approve", help="approve a version for production (manual gate)")
    r.add_argument("model", help="registered model name")
    r.add_argument("version", type=positive_int, help="version number")
    r.add_argument("--note", default="", help="a note kept with the approval")
    r = reg_sub.add_parser("releases", help="every release decision, oldest first")
    r.add_argument("model", help="registered model name")
    r = reg_sub.add_parser("history", help="every move of an alias")
    r.add_argument("model", help="registered model name")
    r.add_argument("alias", help="alias name, e.g. production")
    reg.set_defaults(func=_cmd_registry)


def print_version(mv) -> None:
    lin = mv.lineage
    m = lin.get("metrics", {})
    print(f"Registered: {mv.name} version {mv.version} at {mv.uri}")
    print(f"  test accuracy {m.get('accuracy', float('nan')):.4f}, macro F1 "
          f"{m.get('macro_f1', float('nan')):.4f}, ROC AUC {m.get('roc_auc', float('nan')):.4f},"
          f" recall gap {m.get('recall_gap', float('nan')):.4f}")
    print("  lineage:")
    print(f"    dataset version  {lin.get('dataset_version')}  ({lin.get('dataset_manifest')})")
    print(f"    code version     {lin.get('code_version')}")
    print(f"    pipeline run     {lin.get('pipeline_run')}")
    print(f"    architecture     {lin.get('arch')}")
    hp = lin.get("hyperparameters", {})
    print(f"    hyperparameters  lr={hp.get('lr')} batch_size={hp.get('batch_size')} "
          f"weight_decay={hp.get('weight_decay')} epochs<={hp.get('epochs')} seed={hp.get('seed')}")
    parent = lin.get("parent_version")
    print(f"    parent version   {'none' if parent is None else parent}")


def _cmd_registry(args) -> int:
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(args.registry or str(mlops_home() / "registry"))
    if getattr(args, "model", ""):
        known = registry.models()
        if args.model not in known:
            have = f"Registered models: {', '.join(known)}." if known else "It has no model yet."
            raise ValueError(f"No model named {args.model!r} in the registry at {registry.uri}. "
                             f"{have}")
    if args.registry_command == "list":
        models = [args.model] if args.model else registry.models()
        if not models:
            print(f"No model in {registry.uri}: `mlops run training --data LAKE` trains and "
                  "registers one.")
        for name in models:
            aliases = registry.aliases(name)
            versions = registry.versions(name)
            for alias, v in sorted(aliases.items()):
                if v not in versions:
                    print(f"warning: {name}@{alias} points at version {v}, which was deleted; "
                          f"point it at one: `mlops registry alias {name} {alias} "
                          f"{versions[-1] if versions else 'N'}`", file=sys.stderr)
            for v in versions:
                mv = registry.get(name, v)
                tags = ",".join(a for a, n in aliases.items() if n == v)
                acc = mv.lineage.get("metrics", {}).get("accuracy")
                print(f"{name}\tv{v}\tdataset {mv.lineage.get('dataset_version')}\t"
                      f"accuracy {acc if acc is None else round(acc, 4)}\t{tags}")
    elif args.registry_command == "show":
        mv = registry.get(args.model, args.ref)
        print_version(mv)
        print(f"  files: {', '.join(sorted(mv.files))}")
    elif args.registry_command == "lineage":
        print(json.dumps(registry.get(args.model, args.ref).lineage, indent=2))
    elif args.registry_command == "download":
        out = registry.download(args.model, args.ref, args.dest)
        print(f"Downloaded {args.model}:{args.ref} to {out} (checksums verified)")
    elif args.registry_command == "alias":
        event = registry.set_alias(args.model, args.alias, int(args.version), reason=args.reason)
        print(f"{args.model}@{args.alias} -> version {event['version']} "
              f"(was {event['previous']})")
    elif args.registry_command == "approve":
        registry.get(args.model, args.version)  # the version must exist
        before = registry.approval(args.model, args.version)
        if before:
            print(f"{args.model} version {args.version} was already approved by "
                  f"{before['by']} at {before['at']}; nothing changed.")
            return 0
        rec = registry.approve(args.model, args.version, note=args.note)
        print(f"{args.model} version {rec['version']} approved by {rec['by']} at {rec['at']}")
    elif args.registry_command == "releases":
        for r in registry.releases(args.model):
            why = "; ".join(r["reasons"])
            print(f"{r['at']}  v{r['version']} -> {r['environment']}: {r['decision']} "
                  + (f"(previous v{r['previous_version']})" if r.get("previous_version")
                     is not None else "(no previous version)")
                  + (f"  {why}" if why else ""))
    elif args.registry_command == "history":
        events = registry.alias_history(args.model, args.alias)
        if not events:
            aliases = sorted(registry.aliases(args.model))
            raise OptionError(f"{args.model} has no alias {args.alias!r} (its aliases: "
                              f"{', '.join(aliases) or 'none yet'}).")
        for e in events:
            print(f"{e['at']}  v{e['previous']} -> v{e['version']}  by {e['by']}  {e['reason']}")
    return 0
