"""Fanned-out ingestion: plan key ranges, ingest each part in its own process, publish once.

The version and every published file must be those of a single-process ingestion of the same
lake, bad files, duplicates and label conflicts across parts included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp.dsl import HTML, Dataset, Markdown, Metrics

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, render
from components.ingest import core, fanout
from components.ingest.component import ingest_data, plan_ingest_parts
from components.ingest.core import IngestConfig, IngestError, ingest
from components.ingest.fanout import ingest_part, plan_parts

REPO = Path(__file__).resolve().parents[3]
SNAPSHOT_FILES = ("manifest.csv", "image_stats.csv", "stats.json", "quarantine.csv",
                  "duplicates.csv", "report.json")


def _make_lake(uri: str):
    """48 images, bad files, and copies whose twins fall into other parts of a 3-part plan."""
    lake = open_store(uri)
    generate(LakeSpec(n=48, size=32, seed=61), lake)
    a = render(LakeSpec(n=1, size=32, seed=62), 0)[1]
    b = render(LakeSpec(n=1, size=32, seed=63), 0)[1]
    lake.put("cats/000_a.jpg", a)
    lake.put("cats/zzz_a.jpg", a)        # same bytes, same label: a duplicate
    lake.put("cats/000_b.jpg", b)
    lake.put("dogs/zzz_b.jpg", b)        # same bytes, another label: both quarantined
    lake.put("dogs/broken.jpg", a[: len(a) // 2])
    lake.put("cats/empty.jpg", b"")
    lake.put("horses/h.jpg", render(LakeSpec(n=1, size=32, seed=64), 0)[1])
    lake.put("stray.jpg", b)             # unlabelled
    return lake


def _part_of(plan: dict, key: str) -> int:
    return next(p["index"] for p in plan["parts"]
                if p["start"] <= key and (p["end"] is None or key < p["end"]))


def _run_parts_in_processes(lake_uri: str, root_uri: str, parts: list[str]) -> list[dict]:
    """Every part at the same time, each in its own interpreter (as pods would)."""
    code = ("import json, sys\n"
            "from components.ingest.component import ingest_part\n"
            "out = ingest_part.python_func(data_uri=sys.argv[1], dataset_root=sys.argv[2], "
            "part=sys.argv[3])\n"
            "print(json.dumps(out._asdict()))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, lake_uri, root_uri, part], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in parts]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_parts_in_processes_then_one_publish_give_the_single_process_version(store_uri):
    lake = _make_lake(f"{store_uri}/lake")
    single = ingest(lake.uri, f"{store_uri}/single")

    root_uri = f"{store_uri}/fanned"
    out = plan_ingest_parts.python_func(data_uri=lake.uri, dataset_root=root_uri, parts=3)
    plan = {"plan_id": out.plan_id, "parts": [json.loads(p) for p in out.parts]}
    assert out.num_parts == 3 and len(plan["parts"]) == 3
    # Deterministic, covering every listed object exactly once.
    assert plan_parts(lake.uri, root_uri, 3)["plan_id"] == out.plan_id
    assert sum(p["objects"] for p in plan["parts"]) == single.report["listed"]
    # The twins really are in different parts.
    assert _part_of(plan, "cats/000_a.jpg") != _part_of(plan, "cats/zzz_a.jpg")
    assert _part_of(plan, "cats/000_b.jpg") != _part_of(plan, "dogs/zzz_b.jpg")

    summaries = _run_parts_in_processes(lake.uri, root_uri, out.parts)
    # Every readable, labelled object was decoded by exactly one part.
    assert sum(s["decoded"] for s in summaries) == single.report["decoded"]
    assert not list(open_store(root_uri).list("versions"))  # parts publish nothing

    fanned = ingest(lake.uri, root_uri, plan_id=out.plan_id)
    assert fanned.version == single.version
    assert fanned.report["decoded"] == 0  # the publish step read no image
    assert fanned.report["parts"] == {"plan_id": out.plan_id, "merged": [0, 1, 2],
                                      "missing": []}
    a, b = open_store(f"{store_uri}/single"), open_store(root_uri)
    for name in SNAPSHOT_FILES:  # not just the version: every published file
        assert (a.read_published(f"versions/{single.version}", name)
                == b.read_published(f"versions/{fanned.version}", name)), name
    assert ({o.key for o in a.list("objects")} == {o.key for o in b.list("objects")})
    q = fanned.quarantine.set_index("key")["reason"].to_dict()
    assert q == {"cats/000_b.jpg": "conflicting_labels", "dogs/zzz_b.jpg": "conflicting_labels",
                 "dogs/broken.jpg": "truncated", "cats/empty.jpg": "zero_byte",
                 "horses/h.jpg": "unknown_label", "stray.jpg": "unlabelled"}
    assert fanned.duplicates[["key", "duplicate_of"]].values.tolist() == [
        ["cats/zzz_a.jpg", "cats/000_a.jpg"]]
    # What the parts learned went into the cache; their files are gone.
    assert not [o.key for o in b.list("cache/parts") if o.key.endswith(".csv")]
    again = ingest(lake.uri, root_uri)
    assert again.version == single.version and again.report["decoded"] == 0


def test_a_retried_part_changes_nothing_and_a_missing_part_is_read_by_the_publish(tmp_path):
    lake = _make_lake(str(tmp_path / "lake"))
    single = ingest(lake.uri, str(tmp_path / "single"))
    root = str(tmp_path / "ds")
    plan = plan_parts(lake.uri, root, 3)
    store = open_store(root)

    first = ingest_part(lake.uri, root, plan["parts"][0])
    part_file = first["part_uri"].removeprefix(store.uri + "/")
    written = store.get(part_file)
    retry = ingest_part(lake.uri, root, json.dumps(plan["parts"][0]))  # as KFP passes it
    assert first["decoded"] > 0 and retry["decoded"] == 0
    assert store.get(part_file) == written
    ingest_part(lake.uri, root, plan["parts"][2])
    # Part 1 failed for good (its pod died before writing): the publish step (the component,
    # as the pipeline runs it) reads its objects and says so.
    arts = {name: cls(name=name, uri=str(tmp_path / "out" / name), metadata={})
            for name, cls in [("train", Dataset), ("test", Dataset), ("report", Markdown), ("report_page", HTML),
                              ("metrics", Metrics)]}
    for artifact in arts.values():
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    out = ingest_data.python_func(data_uri=lake.uri, dataset_root=root,
                                  plan_id=plan["plan_id"], **arts)
    assert out.dataset_version == single.version
    report = open(arts["report"].path).read()
    assert f"plan {plan['plan_id']}, parts merged [0, 2], parts that wrote nothing " \
           "(read here) [1]" in report
    decoded = int(re.search(r"Decoded this run: (\d+)", report).group(1))
    assert 0 < decoded <= plan["parts"][1]["objects"]
    assert store.read_published(f"versions/{out.dataset_version}", "manifest.csv") == \
        open_store(str(tmp_path / "single")).read_published(f"versions/{single.version}",
                                                           "manifest.csv")


def test_a_lake_changed_after_the_parts_is_published_as_it_is_then(tmp_path):
    lake = _make_lake(str(tmp_path / "lake"))
    root = str(tmp_path / "ds")
    plan = plan_parts(lake.uri, root, 2)
    for part in plan["parts"]:
        ingest_part(lake.uri, root, part)
    first_cat = sorted(o.key for o in lake.list("cats"))[1]
    lake.put(first_cat, render(LakeSpec(n=1, size=32, seed=65), 0)[1])   # changed
    lake.put("dogs/new.jpg", render(LakeSpec(n=1, size=32, seed=66), 0)[1])  # added
    lake.delete("dogs/broken.jpg")                                        # removed
    result = ingest(lake.uri, root, plan_id=plan["plan_id"])
    fresh = ingest(lake.uri, str(tmp_path / "fresh"))
    assert result.version == fresh.version
    assert result.report["decoded"] == 2  # only what changed since the parts read it
    assert "dogs/new.jpg" in set(result.manifest["key"])
    assert "dogs/broken.jpg" not in set(result.quarantine["key"])


def test_a_part_for_other_settings_or_malformed_is_refused(tmp_path):
    lake = _make_lake(str(tmp_path / "lake"))
    root = str(tmp_path / "ds")
    part = plan_parts(lake.uri, root, 2)["parts"][0]
    with pytest.raises(IngestError, match="same data_uri and settings"):
        ingest_part(lake.uri, root, part, IngestConfig(draft=False))
    with pytest.raises(IngestError, match="not JSON"):
        ingest_part(lake.uri, root, "{index: 0")
    with pytest.raises(IngestError, match="missing"):
        ingest_part(lake.uri, root, {"index": 0})
    with pytest.raises(IngestError, match="Invalid parts: 0"):
        plan_parts(lake.uri, root, 0)
    with pytest.raises(IngestError, match="Invalid plan_id"):
        ingest(lake.uri, root, plan_id="../x")
    # More parts than objects: one part per object at most.
    small = open_store(tmp_path / "small")
    generate(LakeSpec(n=3, size=32, seed=67), small)
    assert len(plan_parts(small.uri, root, 10)["parts"]) == 3


def test_fanout_pipeline_compiles_to_a_parallel_for_and_one_publish(tmp_path):
    from pipelines.local import compile_all

    (path,) = compile_all(tmp_path, ["ingest-fanout"])
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = next(d for d in docs if "deploymentSpec" in d)
    root_tasks = spec["root"]["dag"]["tasks"]
    loops = [t for t in root_tasks.values() if "parameterIterator" in t]
    assert len(loops) == 1
    loop = loops[0]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith(
        "plan-ingest-parts-parts")
    assert loop["iteratorPolicy"]["parallelismLimit"] >= 2
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in body.values()] == ["comp-ingest-part"]
    assert all(t["retryPolicy"]["maxRetryCount"] >= 1 for t in body.values())
    publishes = [n for n, t in root_tasks.items() if t["componentRef"]["name"] ==
                 "comp-ingest-data"]
    assert len(publishes) == 1
    publish = root_tasks[publishes[0]]
    loop_name = next(n for n, t in root_tasks.items() if t is loop)
    assert loop_name in publish["dependentTasks"]  # after every part
    assert publish["inputs"]["parameters"]["plan_id"]["taskOutputParameter"] == {
        "outputParameterKey": "plan_id", "producerTask": "plan-ingest-parts"}
    for task in [*root_tasks.values(), *body.values()]:
        if "cachingOptions" in task:
            assert not task["cachingOptions"].get("enableCache")


def test_ingest_in_parts_runs_the_fanout_in_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "PROCESS_MIN_OBJECTS", 4)  # each part decodes with processes
    lake = _make_lake(str(tmp_path / "lake"))
    single = ingest(lake.uri, str(tmp_path / "single"), IngestConfig(workers=1, draft=False))
    fanned = fanout.ingest_in_parts(lake.uri, str(tmp_path / "ds"), 4,
                                  IngestConfig(workers=2, draft=True))
    assert fanned.version == single.version and fanned.report["decoded"] == 0
    assert os.path.isdir(tmp_path / "ds" / "objects")


def test_range_boundaries_skip_file_names_a_pipeline_parameter_cannot_carry(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=4, size=32, seed=68), lake)
    folder = os.fsencode(tmp_path / "lake" / "cats")
    for i in range(6):  # most of the lake's keys are not UTF-8 (latin-1 names from a camera)
        with open(os.path.join(folder, b"caf\xe9_%d.jpg" % i), "wb") as f:
            f.write(render(LakeSpec(n=1, size=32, seed=70 + i), 0)[1])
    plan = plan_parts(lake.uri, str(tmp_path / "ds"), 4)
    for part in plan["parts"]:
        json.dumps(part, ensure_ascii=False).encode("utf-8")  # no lone surrogate
    keys = [o.key for o in core.list_local_lake(lake)[0]]
    for key in keys:  # in exactly one part
        assert sum(1 for p in plan["parts"] if p["start"] <= key
                   and (p["end"] is None or key < p["end"])) == 1, key
    assert len(plan["parts"]) >= 2
    assert sum(p["objects"] for p in plan["parts"]) == len(keys) == 10
    single = ingest(lake.uri, str(tmp_path / "single"))
    fanned = fanout.ingest_in_parts(lake.uri, str(tmp_path / "ds"), 4)
    assert fanned.version == single.version and fanned.report["decoded"] == 0
    assert (fanned.quarantine["reason"] == "invalid_key_encoding").sum() == 6


def test_a_labels_csv_lake_fans_out_to_the_same_version(tmp_path):
    lake = open_store(tmp_path / "flat")
    rows = ["key,label"]
    for i in range(12):
        lake.put(f"img_{i:02d}.jpg", render(LakeSpec(n=1, size=32, seed=80 + i), 0)[1])
        rows.append(f"img_{i:02d}.jpg,{'Cat' if i % 2 else 'dogs'}")
    lake.put("img_12.jpg", render(LakeSpec(n=1, size=32, seed=92), 0)[1])
    rows += ["img_03.jpg,dog", "img_12.jpg,horse"]  # a conflict and an unknown label
    lake.put("labels.csv", ("\n".join(rows) + "\n").encode())  # inside the lake
    config = IngestConfig(labels_csv=str(tmp_path / "flat" / "labels.csv"))
    single = ingest(lake.uri, str(tmp_path / "single"), config)
    fanned = fanout.ingest_in_parts(lake.uri, str(tmp_path / "ds"), 3, config)
    assert fanned.version == single.version and fanned.report["decoded"] == 0
    assert fanned.report["excluded_from_listing"] == ["labels.csv"]
    assert fanned.quarantine.set_index("key")["reason"].to_dict() == {
        "img_03.jpg": "conflicting_labels", "img_12.jpg": "unknown_label"}


def _mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_fans_out_over_processes_and_names_mistakes(tmp_path):
    lake = _make_lake(str(tmp_path / "lake"))
    single = ingest(lake.uri, str(tmp_path / "single"))
    res = _mlops("ingest", "fanout", "--data", "lake", "--dataset-root", "ds", "--parts", "3",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"Dataset version: {single.version} (published)" in res.stdout
    assert "parts merged [0, 1, 2]" in res.stdout and "decoded by this step: 0" in res.stdout
    assert f"{single.report['accounting']}" in res.stdout
    bad = _mlops("ingest", "part", "--data", "lake", "--dataset-root", "ds", "--plan",
                 "0123456789abcdef", "--index", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "No plan 0123456789abcdef" in bad.stderr
    assert "Traceback" not in bad.stderr


def _run_compiled(spec: dict, arguments: dict, tmp_path: Path) -> dict:
    """Runs a compiled pipeline spec the way the KFP backend's driver resolves it (a stand-in:
    kfp.local 2.16 cannot run a ParallelFor). Inputs come from the pipeline's parameters
    (defaults included) or an upstream task's output parameters, which travel as JSON; a
    ``parameterIterator`` runs its DAG once per item of the list it names, the item under
    ``itemInput`` (kubeflow/pipelines backend/src/v2/driver: the iteration count comes from
    the list, each iteration's item from its index). Returns task name -> outputs."""
    from components.ingest import component

    funcs = {"comp-plan-ingest-parts": component.plan_ingest_parts,
             "comp-ingest-part": component.ingest_part, "comp-ingest-data": component.ingest_data}
    outputs: dict[str, dict] = {}
    types = {"Dataset": Dataset, "Markdown": Markdown, "Metrics": Metrics, "HTML": HTML}

    def resolve(binding: dict, scope: dict):
        if "componentInputParameter" in binding:
            return scope[binding["componentInputParameter"]]
        ref = binding["taskOutputParameter"]
        return outputs[ref["producerTask"]][ref["outputParameterKey"]]

    def run_dag(tasks: dict, scope: dict, suffix: str) -> None:
        done: set[str] = set()
        while len(done) < len(tasks):
            for name, task in tasks.items():
                if name in done or not set(task.get("dependentTasks", [])) <= done:
                    continue
                params = {k: resolve(b, scope)
                          for k, b in task.get("inputs", {}).get("parameters", {}).items()}
                comp = spec["components"][task["componentRef"]["name"]]
                if "dag" in comp:
                    it = task["parameterIterator"]
                    for i, item in enumerate(params[it["items"]["inputParameter"]]):
                        run_dag(comp["dag"]["tasks"], {**params, it["itemInput"]: item},
                                f"{suffix}-{i}")
                else:
                    arts = {}
                    for out, d in comp.get("outputDefinitions", {}).get("artifacts", {}).items():
                        cls = types[d["artifactType"]["schemaTitle"].split(".")[-1]]
                        arts[out] = cls(name=out, uri=str(tmp_path / f"{name}{suffix}" / out),
                                        metadata={})
                        os.makedirs(os.path.dirname(arts[out].path), exist_ok=True)
                    result = funcs[task["componentRef"]["name"]].python_func(**params, **arts)
                    outputs[name + suffix] = outputs[name] = json.loads(json.dumps(
                        result._asdict() if hasattr(result, "_asdict") else {}))
                done.add(name)

    defaults = {k: v.get("defaultValue")
                for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    run_dag(spec["root"]["dag"]["tasks"], {**defaults, **arguments}, "")
    return outputs


def test_the_compiled_fanout_runs_as_the_kfp_driver_resolves_it(tmp_path):
    from pipelines.local import compile_all

    (path,) = compile_all(tmp_path / "compiled", ["ingest-fanout"])
    spec = next(d for d in yaml.safe_load_all(path.read_text()) if d and "deploymentSpec" in d)
    lake = _make_lake(str(tmp_path / "lake"))
    single = ingest(lake.uri, str(tmp_path / "single"))
    outputs = _run_compiled(spec, {"data_uri": lake.uri, "dataset_root": str(tmp_path / "ds"),
                                   "parts": 3}, tmp_path / "run")
    assert outputs["plan-ingest-parts"]["num_parts"] == 3
    assert [outputs[f"ingest-part-{i}"]["objects"] for i in range(3)] == [
        json.loads(p)["objects"] for p in outputs["plan-ingest-parts"]["parts"]]
    assert outputs["ingest-data"]["dataset_version"] == single.version
    report = (tmp_path / "run" / "ingest-data" / "report").read_text()
    assert "Decoded this run: 0;" in report and "parts merged [0, 1, 2]" in report
    assert not list(open_store(tmp_path / "ds").list("cache/parts"))  # merged and removed
