"""A user's mistakes at the command line: each exits non-zero with one message that names
the problem, and never a traceback (tracebacks are for --debug)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from components.cli import main

LAKE = "/tmp/no-such-lake-for-mlops-tests"
TRAIN = ["run", "training", "--data", LAKE]

# argv, the exit code, words the message must contain (case-insensitive)
MISTAKES = [
    (TRAIN + ["--epochs", "0"], 2, ["--epochs", "0", ">= 1"]),
    (TRAIN + ["--trial-epochs", "-1"], 2, ["--trial-epochs", "-1"]),
    (TRAIN + ["--canary-steps", "10,abc"], 2, ["--canary-steps", "10,abc"]),
    (TRAIN + ["--canary-steps", "50,10"], 2, ["--canary-steps", "increasing"]),
    (TRAIN + ["--canary-steps", "0,100"], 2, ["--canary-steps", "between 1 and 99"]),
    (TRAIN + ["--min-accuracy", "1.5"], 2, ["--min-accuracy", "1.5", "between 0"]),
    (TRAIN + ["--min-macro-f1", "-0.1"], 2, ["--min-macro-f1", "-0.1"]),
    (TRAIN + ["--max-recall-gap", "2"], 2, ["--max-recall-gap", "2"]),
    (TRAIN + ["--search-space", "{bad"], 2, ["--search-space", "not valid json"]),
    (TRAIN + ["--search-space", "[1, 2]"], 2, ["--search-space", "json object"]),
    (TRAIN + ["--search-space", '{"lr": 0.1}'], 2, ["--search-space", "list of values"]),
    (TRAIN + ["--search-space", '{"nosuch": [1]}'], 2, ["--search-space", "nosuch"]),
    (TRAIN + ["--search-mode", "grid", "--trials", "2", "--search-space",
              '{"lr": [0.1, 0.01, 0.001]}'], 2, ["3 grid combinations", "--trials"]),
    (TRAIN + ["--approval-timeout-s", "-5"], 2, ["--approval-timeout-s"]),
    (TRAIN + ["--trials", "0"], 2, ["--trials", "0"]),
    (TRAIN + ["--epochs", "abc"], 2, ["--epochs", "invalid int"]),
    (["run", "ingest", "--data", LAKE, "--test-fraction", "1.5"], 2, ["--test-fraction"]),
    (["run", "ingest", "--data", LAKE, "--test-fraction", "0"], 2, ["--test-fraction"]),
    (["run", "ingest", "--data", LAKE, "--workers", "-1"], 2, ["--workers", "-1"]),
    (["data", "generate", "--out", "LAKE", "--n", "0"], 2, ["--n", "0"]),
    (["data", "generate", "--out", "LAKE", "--cat-fraction", "2"], 2, ["--cat-fraction"]),
    (["data", "generate", "--out", "LAKE", "--size", "2"], 2, ["--size", "2"]),
    (["data", "generate", "--out", "LAKE", "--condition", "fog"], 2, ["--condition", "fog"]),
    (["registry", "list", "nosuch"], 2, ["nosuch", "registry"]),
    (["registry", "show", "nosuch"], 2, ["nosuch"]),
    (["registry", "releases", "nosuch"], 2, ["nosuch"]),
    (["registry", "history", "nosuch", "production"], 2, ["nosuch"]),
    (["registry", "approve", "pet-classifier", "x"], 2, ["version", "'x'"]),
    (["registry", "approve", "pet-classifier", "0"], 2, ["version"]),
    (["runs", "show", "nosuch"], 2, ["no pipeline run"]),
    (["trian"], 2, ["invalid choice", "trian"]),
    (["data", "generate", "--out", "/dev/null/lake", "--n", "2"], 2, ["/dev/null"]),
    (["registry", "--registry", "s3://bucket/registry", "list"], 1, ["AWS_ENDPOINT_URL"]),
    (["deploy", "release", "1", "--probes", LAKE, "--canary-steps", "5,abc"], 2,
     ["--canary-steps", "5,abc"]),
    (["deploy", "release", "1", "--probes", LAKE, "--requests-per-step", "0"], 2,
     ["--requests-per-step"]),
    (["deploy", "predict", "/tmp/no-such-frame.jpg"], 2, ["nothing is deployed",
                                                         "mlops deploy start"]),
    (["serve", "--package-dir", LAKE, "--port", "99999"], 2, ["--port", "99999"]),
    (["serve", "--package-dir", LAKE], 2, ["model.onnx", LAKE]),
    (["compile", "--trials", "-3", "--out", "compiled"], 2, ["--trials", "-3"]),
    # Accelerators and TrainJobs: a combination that would compile something else than asked.
    (["compile", "--out", "compiled", "--trials-on-trainer"], 2,
     ["--trials-on-trainer", "--trainer-nodes"]),
    (["compile", "--out", "compiled", "--trainer-nodes", "0"], 2, ["--trainer-nodes 0"]),
    (["compile", "--out", "compiled", "--accelerator-count", "2"], 2,
     ["--accelerator-count 2", "needs --accelerator"]),
    (["compile", "--out", "compiled", "--accelerator", "bad type"], 2,
     ["--accelerator 'bad type'", "nvidia.com/gpu"]),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--arg", "foo"], 2,
     ["--arg", "name=value"]),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--arg", "epochs=abc"], 2,
     ["epochs", "abc", "integer"]),
    (["monitor", "run", "--start", "yesterday"], 2, ["yesterday", "iso 8601"]),
    (["monitor", "run", "--hours", "-1"], 2, ["--hours -1", "> 0"]),
    (["demo", "--n", "0"], 2, ["--n 0", ">= 1"]),
    (["demo-loop", "--window", "0"], 2, ["--window 0", ">= 10"]),
    (["demo-loop", "--check-every", "500"], 2, ["--check-every 500", "between 1 and 100"]),
    (["demo-loop", "--label-share", "2"], 2, ["--label-share 2", "between 0"]),
    (["deploy", "release", "1", "--probes", LAKE], 2,
     ["--probes", "labelled split folder", "mlops runs show"]),
    (["monitor", "run", "--settings", '{"p_val": "x"}'], 2, ["p_val", "'x'", "a number"]),
    (["govern", "run", "--policy", "/tmp/no-such-policy.yaml"], 2, ["no governance policy"]),
    (["data", "generate", "--out", "LAKE", "--size", "10x"], 2, ["10x", "wxh"]),
    # Finding 1: training takes every ingestion option (one definition with `run ingest`),
    # or a published version, and says which is missing.
    (TRAIN + ["--labels-csv", "labels.csv", "--layout", "kaggle"], 2,
     ["--layout kaggle", "--labels-csv"]),
    (TRAIN + ["--layout", "csv"], 2, ["--layout csv", "--labels-csv"]),
    (TRAIN + ["--test-fraction", "1.5"], 2, ["--test-fraction", "1.5"]),
    (TRAIN + ["--workers", "-2"], 2, ["--workers", "-2"]),
    (TRAIN + ["--label-aliases", "cat"], 2, ["cat"]),
    (["run", "training"], 2, ["--data", "--dataset-version", "mlops data versions"]),
    (["run", "training", "--dataset-version", "0123abcd"], 2,
     ["0123abcd", "not published", "mlops data versions"]),
    (TRAIN + ["--dataset-version", "0123abcd"], 2, ["--data", "--dataset-version",
                                                    "one of them"]),
    # Finding 2: the product owner's verbs say what they cannot do and what can.
    (["govern", "retrain", "--reason", "new camera", "--launcher", "none"], 2,
     ["no production version", "mlops run training"]),
    (["govern", "retrain", "--reason", " ", "--launcher", "none"], 2, ["--reason"]),
    (["govern", "start-episode", "v1-0009"], 2, ["v1-0009", "mlops govern episodes"]),
    (["govern", "start-episode", "v1-0001", "--launcher", "none"], 2,
     ["--launcher none", "--launcher local"]),
    (["govern", "hold", "place"], 2, ["--note", "why"]),  # the model named by default
    (["govern", "rollback", "--reason", "bad answers"], 2, ["nothing rolled back",
                                                            "no production version"]),
    (["govern", "rollback", "--reason", "bad answers", "--target", "none"], 2,
     ["--target none", "--target local"]),
    (["run", "monitoring", "--hours", "0"], 2, ["--hours", "0"]),
    (["run", "continuous-training", "--since", "yesterday"], 2, ["--since", "yesterday"]),
    (["run", "continuous-training", "--epochs", "0"], 2, ["--epochs", "0"]),
    # Finding 7: what was silent or misleading names the fix.
    (["manifests", "--namespace", "Bad_NS", "--out", "m"], 2,
     ["--namespace", "Bad_NS", "kubernetes name"]),
    (["manifests", "--s3-secret", "my secret", "--out", "m"], 2, ["--s3-secret"]),
    # A label for a request the capture never held (a typo) is refused, saying how to force.
    (["monitor", "label", "req-typo", "cats", "--classes", "cats,dogs"], 2,
     ["'req-typo'", "never captured", "mlops deploy predict", "--uncaptured"]),
    # A label CSV with a 1 MB cell: the row and the limit, not "This is a bug".
    (["monitor", "label", "--csv", "big.csv", "--classes", "cats,dogs"], 2,
     ["big.csv line 3", "field limit", "131,072"]),
    # Finding 8: the one pixel limit is raised with --max-pixels (or MLOPS_MAX_PIXELS).
    (["run", "ingest", "--data", LAKE, "--max-pixels", "-5"], 2, ["--max-pixels", "-5"]),
    # Finding 9: storage mistakes found before the pipeline starts, naming the option.
    (["run", "ingest", "--data", "s3:/pets/lake"], 2, ["--data", "s3:/pets/lake",
                                                        "s3://bucket/prefix"]),
    (["run", "training", "--data", "s3://pets/lake"], 2, ["--data", "AWS_ENDPOINT_URL"]),
    (["run", "training", "--data", LAKE, "--registry", "s3:registry"], 2, ["--registry"]),
    # Finding 10: an unknown option of a sub-command gets that sub-command's usage.
    (["registry", "list", "--nosuch"], 2, ["mlops registry list", "--nosuch"]),
    (["run", "training", "--data", LAKE, "--label-csv", "x"], 2,
     ["mlops run training: error", "--label-csv"]),
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    # The CLI exports the capture store for the servers it starts; keep that in this test.
    monkeypatch.setenv("MLOPS_CAPTURE_URI", str(tmp_path / "home" / "monitoring"))
    for name in ("AWS_ENDPOINT_URL", "MINIO_ENDPOINT", "S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.csv").write_text("request_id,label\nr1,cats\nr2," + "x" * 2**20 + "\n")
    return tmp_path


@pytest.mark.parametrize("argv,code,words", MISTAKES, ids=[" ".join(m[0])[:60]
                                                            for m in MISTAKES])
def test_a_mistake_is_one_clear_line(argv, code, words, home, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    low = err.lower()
    for word in words:
        assert word.lower() in low, f"{word!r} not in: {err}"
    # One message, not pages: argparse prints usage + one error line.
    assert len([line for line in err.splitlines() if line.startswith("error:")
                or ": error:" in line]) == 1, err


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failing_pipeline_names_its_step_and_keeps_the_log(home):
    proc = subprocess.run([sys.executable, "-m", "components.cli", "run", "ingest", "--data",
                           LAKE], capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][-1]
    assert "step 'ingest-data'" in line and "No objects found" in line
    log = line.split("full log: ")[1].rstrip(")")
    assert "Traceback" in open(log).read()  # the details are kept, in the file
    listed = subprocess.run([sys.executable, "-m", "components.cli", "runs", "list"],
                            capture_output=True, text=True, timeout=60).stdout
    assert "failed" in listed and "ingest-data" in listed


def test_every_option_has_help(home):
    from components.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif action.option_strings and action.dest != "help" and not action.help:
                missing.append(f"{path} {action.option_strings[0]}")

    walk(build_parser(), "mlops")
    assert not missing, f"options without help text: {missing}"


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("argv", [
    ["monitor", "feedback-server", "--classes", "cats,dogs", "--port", "{port}"],
    ["govern", "receiver", "--port", "{port}"],
    ["deploy", "start", "--port", "production={port}"]], ids=lambda a: " ".join(a[:2]))
def test_a_taken_port_is_one_line_before_anything_says_serving(argv, taken_port, home,
                                                               capsys):
    """Finding 6: "port N is taken", not "Serving on …" and then a bind traceback."""
    rc = main([a.format(port=taken_port) for a in argv])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert f"port {taken_port} is taken" in captured.err and "--port" in captured.err
    assert "Serving" not in captured.out + captured.err and "on http" not in captured.err


def test_a_typo_alias_and_a_home_that_is_a_file_are_named(home, capsys, monkeypatch):
    """Finding 7: `registry history MODEL prod` was silent (exit 0); MLOPS_HOME pointing to
    a file said "no dataset version"."""
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(str(home / "home" / "registry"))
    registry.register("pet-classifier", {"model.onnx": b"x"}, {})
    registry.set_alias("pet-classifier", "production", 1, reason="first")
    assert main(["registry", "history", "pet-classifier", "prod"]) == 2
    assert "no alias 'prod' (its aliases: production)" in capsys.readouterr().err
    (home / "afile").write_text("")
    monkeypatch.setenv("MLOPS_HOME", str(home / "afile"))
    assert main(["data", "versions"]) == 2
    assert "MLOPS_HOME=" in capsys.readouterr().err



def test_an_alias_at_a_deleted_version_is_named(home, capsys):
    """Finding 7: an alias pointing at a deleted version was dropped from `registry list`
    without a word, and `registry show` said only "No object …/_PUBLISHED"."""
    import shutil

    from components.common.registry import ModelRegistry

    registry = ModelRegistry(str(home / "home" / "registry"))
    for _ in range(2):
        registry.register("pet-classifier", {"model.onnx": b"x"}, {})
    registry.set_alias("pet-classifier", "production", 2, reason="second")
    shutil.rmtree(home / "home" / "registry" / "pet-classifier" / "versions" / "2")
    assert main(["registry", "list"]) == 0
    out, err = capsys.readouterr()
    assert "pet-classifier\tv1" in out and "v2" not in out
    assert "pet-classifier@production points at version 2, which was deleted" in err
    assert "mlops registry alias pet-classifier production 1" in err
    assert main(["registry", "show", "pet-classifier", "@production"]) == 2
    err = capsys.readouterr().err
    assert "version 2, which was deleted" in err and "_PUBLISHED" not in err


def test_a_full_disk_names_where_and_what_to_do(home):
    """Finding 9: a full disk was a bare `[Errno 28]` with no path."""
    import errno

    from components.cli.common import explain_error

    code, line = explain_error(OSError(errno.ENOSPC, "No space left on device", "/data/x"))
    assert code == 1 and "no space left on the disk of /data/x" in line and "df -h" in line
    code, line = explain_error(OSError(errno.ENOSPC, "No space left on device"))
    assert str(home / "home") in line and "MLOPS_HOME" in line


def test_a_label_takes_the_names_ingestion_takes(home, capsys):
    """Finding 8: ingestion maps `dog` to `dogs`; `monitor label … dog` was refused."""
    assert main(["monitor", "label", "req-1", "dog", "--classes", "cats,dogs",
                 "--uncaptured"]) == 0
    assert "req-1/0: dogs created" in capsys.readouterr().out
    assert main(["monitor", "label", "req-2", "horse", "--classes", "cats,dogs",
                 "--uncaptured"]) == 2
    assert "unknown label 'horse'" in capsys.readouterr().err


def test_no_help_line_shows_a_default_of_none_or_a_doubled_default(home):
    """Finding 10: 38 help lines ended with a wrong, doubled `(default: None)`. Every
    sub-command's help, as `mlops … --help` prints it; each default said one way,
    `(default: …)` (`--max-pixels` said "Default MLOPS_MAX_PIXELS … (default: 0)")."""
    import re

    from components.cli import build_parser
    from components.deploy import router
    from components.serve import server

    bad, seen = [], 0

    def walk(parser, path):
        nonlocal seen
        seen += 1
        text = " ".join(parser.format_help().split())
        for m in re.finditer(r"default: None|default: False|\(default: \)"
                             r"|\(default: [^)]*\)\s*\(default:|\(default [^:]", text):
            bad.append(f"{path}: …{text[max(0, m.start() - 60):m.end()]}")
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif action.help and "default" in action.help.lower() and \
                    parser._get_formatter()._get_help_string(action) != action.help:
                bad.append(f"{path} {action.option_strings[0]}: says its default twice")

    walk(build_parser(), "mlops")
    assert seen > 40  # every sub-command was walked
    walk(server.build_parser(), "mlops serve")  # the model server's own parser
    walk(router.build_parser(), "router")
    assert not bad, "\n".join(bad)


def test_data_versions_shows_date_size_and_source(home, capsys):
    """Finding 10: `data versions` printed bare hashes."""
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from components.ingest.core import IngestConfig, ingest

    lake = open_store(home / "lake")
    generate(LakeSpec(n=12, size=32, seed=3), lake)
    result = ingest(lake.uri, str(home / "home" / "datasets"), IngestConfig())
    assert main(["data", "versions"]) == 0
    line = capsys.readouterr().out.strip()
    kib = sum(len(lake.get(k)) for k in result.manifest["key"]) / 1024
    counts = result.manifest["label"].value_counts()
    assert line.startswith(f"{result.version}  20") and f"12 images, {kib:.0f} KiB" in line
    assert f"(cats {counts['cats']}, dogs {counts['dogs']})" in line
    assert line.endswith(f"from {lake.uri}")


def test_an_alias_typo_is_answered_with_the_aliases_there_are(home, capsys):
    """Finding 10: `registry show pet-classifier @prod` answered with `mlops registry alias
    pet-classifier prod VERSION`, the command that would create the typo."""
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(str(home / "home" / "registry"))
    registry.register("pet-classifier", {"model.onnx": b"x"}, {})
    assert main(["registry", "show", "pet-classifier", "@prod"]) == 2
    err = capsys.readouterr().err
    assert "no alias 'prod'; its aliases: none" not in err
    assert "(no alias yet)" in err and "mlops registry alias pet-classifier prod" in err
    registry.set_alias("pet-classifier", "production", 1, reason="first")
    assert main(["registry", "show", "pet-classifier", "@prod"]) == 2
    err = capsys.readouterr().err
    assert "its aliases: production" in err and "Did you mean pet-classifier@production" in err
    assert "mlops registry alias" not in err


def test_a_local_retraining_uses_the_lake_and_size_production_was_trained_with(home):
    """`mlops run training --data lake` then `mlops govern run`: the retraining read
    $MLOPS_HOME/lake ("No objects found") at 64 px, not ./lake at the 32 px production used."""
    import json as _json

    from components.cli.common import retrain_defaults
    from components.common.registry import ModelRegistry

    registry = ModelRegistry(str(home / "home" / "registry"))
    fallback = {"data_uri": str(home / "home" / "lake")}
    assert retrain_defaults(registry.uri, "pet-classifier", home / "home") == fallback
    snapshot = home / "snap"
    snapshot.mkdir()
    (snapshot / "report.json").write_text(_json.dumps({"labels_csv": None}))
    registry.register("pet-classifier", {"model.onnx": b"x"}, {
        "dataset_source": "file:///park/lake", "dataset_snapshot": snapshot.as_uri(),
        "hyperparameters": {"image_size": 32}})
    registry.set_alias("pet-classifier", "production", 1, reason="first")
    assert retrain_defaults(registry.uri, "pet-classifier", home / "home") == {
        "data_uri": "file:///park/lake", "image_size": 32}
    # A lake read through a labels CSV is read through it again (issue 23: the retraining
    # could not read it), with the classes, aliases and split the ingestion recorded.
    (snapshot / "report.json").write_text(_json.dumps({
        "labels_csv": "file:///park/lake/labels.csv", "layout": "csv",
        "classes": ["cats", "dogs"], "declared_classes": ["cats", "dogs", "birds"],
        "label_aliases": "bird=birds", "test_fraction": 0.25}))
    assert retrain_defaults(registry.uri, "pet-classifier", home / "home") == {
        "data_uri": "file:///park/lake", "labels_csv": "file:///park/lake/labels.csv",
        "layout": "csv", "classes": "cats,dogs,birds", "label_aliases": "bird=birds",
        "test_fraction": 0.25, "image_size": 32}
    # Another lake than production's: its CSV does not label it; the input size stays.
    assert retrain_defaults(registry.uri, "pet-classifier", home / "home", "/other") == {
        "data_uri": "/other", "image_size": 32}


@pytest.mark.parametrize("argv, command", [
    (["runs", "list"], "mlops run …"),
    (["registry", "list"], "mlops run training --data LAKE"),
    (["data", "versions"], "mlops run ingest --data LAKE"),
    (["deploy", "status"], "mlops deploy start"),
    (["monitor", "status"], "mlops monitor run"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_an_empty_home_names_the_command_that_fills_it(argv, command, home, capsys):
    """`mlops registry list` said only "No model in …"; a new user's first commands say what
    to run."""
    main(argv)
    assert command in capsys.readouterr().out
