"""Ingestion under bad lakes and faults (issue 9): every case a user would call data loss."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, render
from components.ingest.core import IngestConfig, IngestError, ingest, object_key
from components.ingest.report import report_markdown
from components.ingest.snapshot import list_versions


def _jpeg(index: int, size: int = 32, seed: int = 31) -> bytes:
    return render(LakeSpec(n=1, size=size, seed=seed), index)[1]


def _accounted(result) -> set[str]:
    return (set(result.manifest["key"]) | set(result.quarantine["key"])
            | set(result.duplicates["key"]))


# --- declared classes ---------------------------------------------------------------------


def test_only_declared_classes_and_their_aliases_become_labels(tmp_path):
    lake = open_store(tmp_path / "lake")
    names = {"cats/a.jpg": "cats", "Cats/b.jpg": "cats", "cat/c.jpg": "cats",
             "CAT.7.jpg": "cats", "dogs/d.jpg": "dogs", "DOGS/e.jpg": "dogs", "dog.3.jpg": "dogs",
             "unlabelled/x.jpg": None, "horse.1.jpg": None, "Birds/y.jpg": None}
    for i, key in enumerate(names):
        lake.put(key, _jpeg(i))
    result = ingest(lake.uri, str(tmp_path / "ds"))
    labels = result.manifest.set_index("key")["label"].to_dict()
    assert labels == {k: v for k, v in names.items() if v}
    assert result.report["classes"] == ["cats", "dogs"]
    q = result.quarantine.set_index("key")
    assert q["reason"].to_dict() == {"unlabelled/x.jpg": "unknown_label",
                                     "horse.1.jpg": "unknown_label", "Birds/y.jpg": "unknown_label"}
    assert "'horse'" in q.loc["horse.1.jpg", "detail"] and "cats, dogs" in q.loc[
        "horse.1.jpg", "detail"]

    # Declared otherwise, the same lake has three classes.
    custom = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig(
        classes=("cats", "dogs", "birds"), aliases={"cat": "cats", "dog": "dogs"}))
    assert custom.report["classes"] == ["birds", "cats", "dogs"]
    assert set(custom.quarantine["key"]) == {"unlabelled/x.jpg", "horse.1.jpg"}


def test_labels_csv_labels_are_folded_to_the_declared_classes(tmp_path, monkeypatch):
    lake = open_store(tmp_path / "flat")
    for i in range(4):
        lake.put(f"img_{i}.jpg", _jpeg(i))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "labels.csv").write_text(
        "key,label\nimg_0.jpg,Cat\nimg_1.jpg,DOGS\nimg_2.jpg,horse\nimg_3.jpg,dog\n"
        "img_3.jpg,Dogs\n")
    # A bare file name in the current folder, as a user types it.
    monkeypatch.chdir(tmp_path / "work")
    result = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig(labels_csv="labels.csv"))
    assert result.manifest.set_index("key")["label"].to_dict() == {
        "img_0.jpg": "cats", "img_1.jpg": "dogs", "img_3.jpg": "dogs"}  # dog == Dogs: no conflict
    assert result.quarantine.set_index("key")["reason"].to_dict() == {
        "img_2.jpg": "unknown_label"}


# --- one bad file never kills the run -----------------------------------------------------


def test_a_non_utf8_file_name_is_quarantined_and_the_run_goes_on(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=12, size=32, seed=32), lake)
    bad_name = os.path.join(os.fsencode(tmp_path / "lake" / "cats"), b"caf\xe9.jpg")
    with open(bad_name, "wb") as f:
        f.write(_jpeg(40))
    result = ingest(lake.uri, str(tmp_path / "ds"))
    assert result.report["ingested"] == 12 and result.report["listed"] == 13
    assert result.quarantine.set_index("key")["reason"].to_dict() == {
        "cats/caf\\xe9.jpg": "invalid_key_encoding"}
    root = open_store(tmp_path / "ds")
    published = pd.read_csv(io.BytesIO(root.read_published(f"versions/{result.version}",
                                                           "quarantine.csv")))
    assert list(published["key"]) == ["cats/caf\\xe9.jpg"]
    (tmp_path / "report.md").write_text(report_markdown(result))  # writable as UTF-8
    again = ingest(lake.uri, str(tmp_path / "ds"))  # the cache copes too
    assert again.version == result.version


def test_a_file_deleted_between_listing_and_reading_is_quarantined(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=10, size=32, seed=33), lake)
    victim = tmp_path / "lake" / "dogs" / sorted(os.listdir(tmp_path / "lake" / "dogs"))[-1]

    def delete_after_first(done, total):
        if done == 1 and victim.exists():
            victim.unlink()  # a lake being cleaned up while it is ingested

    result = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig(workers=1),
                    progress=delete_after_first)
    key = f"dogs/{victim.name}"
    assert result.quarantine.set_index("key")["reason"].to_dict() == {key: "vanished"}
    assert result.report["ingested"] == 9 and result.report["listed"] == 10
    assert list_versions(str(tmp_path / "ds")) == [result.version]


def test_a_pipe_in_the_lake_is_refused_without_reading_it(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=6, size=32, seed=34), lake)
    os.mkfifo(tmp_path / "lake" / "cats" / "camera.jpg")  # reading it would block forever
    result = ingest(lake.uri, str(tmp_path / "ds"))
    assert result.quarantine.set_index("key")["reason"].to_dict() == {
        "cats/camera.jpg": "not_a_file"}


def test_an_object_over_the_byte_limit_is_refused_without_reading(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=6, size=32, seed=36), lake)
    (tmp_path / "lake" / "dogs" / "cam.mp4").write_bytes(b"\0" * 5000)  # a stray video
    result = ingest(lake.uri, str(tmp_path / "ds"), IngestConfig(max_bytes=4000))
    q = result.quarantine.set_index("key")
    assert q["reason"].to_dict() == {"dogs/cam.mp4": "too_large"}
    assert "5000 bytes" in q.loc["dogs/cam.mp4", "detail"]


# --- symbolic links -----------------------------------------------------------------------


def test_links_inside_the_lake_are_followed_and_links_outside_are_reported(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = open_store(lake_dir)
    generate(LakeSpec(n=16, size=32, seed=35), lake)
    # A camera's folder kept elsewhere in the lake, linked into the class folder.
    archive = lake_dir / "dogs" / "archive" / "cam2"
    archive.mkdir(parents=True)
    for i in range(3):
        (archive / f"d{i}.jpg").write_bytes(_jpeg(50 + i))
    (lake_dir / "cats" / "cam3").mkdir()
    for i in range(2):
        (lake_dir / "cats" / "cam3" / f"c{i}.jpg").write_bytes(_jpeg(60 + i))
    os.symlink(lake_dir / "cats" / "cam3", lake_dir / "cats" / "latest")  # inside: followed
    os.symlink("../dogs/archive/cam2", lake_dir / "dogs" / "cam2")  # relative, inside
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_jpeg(70))
    os.symlink(outside, lake_dir / "cats" / "escape")  # a folder outside the root
    os.symlink(outside / "secret.jpg", lake_dir / "dogs" / "secret.jpg")  # a file outside
    os.symlink(lake_dir / "cats", lake_dir / "cats" / "loop")  # a cycle
    os.symlink(lake_dir / "gone", lake_dir / "dogs" / "broken.jpg")

    result = ingest(lake.uri, str(tmp_path / "ds"))
    manifest = set(result.manifest["key"])
    assert {"cats/cam3/c0.jpg", "dogs/archive/cam2/d0.jpg"} <= manifest
    dups = result.duplicates.set_index("key")["duplicate_of"].to_dict()
    assert dups["cats/latest/c0.jpg"] == "cats/cam3/c0.jpg"  # listed under both keys, once kept
    assert dups["dogs/cam2/d2.jpg"] == "dogs/archive/cam2/d2.jpg"
    q = result.quarantine.set_index("key")["reason"].to_dict()
    assert q == {"cats/escape": "link_outside_lake", "dogs/secret.jpg": "link_outside_lake",
                 "cats/loop": "link_loop", "dogs/broken.jpg": "broken_link"}
    # Nothing outside the root was read: its bytes are nowhere in the snapshot.
    from components.common.storage import sha256_bytes

    assert sha256_bytes(_jpeg(70)) not in set(result.manifest["sha256"])
    assert result.report["listed"] == 16 + 3 + 2 + 2 + 3 + 4


# --- the cache and the snapshot's integrity -----------------------------------------------


def test_cache_is_keyed_by_the_validation_settings(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=20, size=32, seed=36), lake)
    generate(LakeSpec(n=10, size=64, seed=37), lake, prefix="big")
    for obj in list(lake.list()):
        if obj.key.startswith("big/"):  # big/cats/x.jpg -> cats/big_x.jpg
            lake.put(obj.key[4:].replace("/", "/big_"), lake.get(obj.key))
            lake.delete(obj.key)
    root = str(tmp_path / "ds")
    assert ingest(lake.uri, root, IngestConfig(min_side=16)).report["ingested"] == 30
    cached = ingest(lake.uri, root, IngestConfig(min_side=48))
    fresh = ingest(lake.uri, str(tmp_path / "ds2"), IngestConfig(min_side=48, use_cache=False))
    assert cached.report["ingested"] == fresh.report["ingested"] == 10
    assert cached.version == fresh.version
    # Back to the first settings: their cache is still valid, nothing is decoded.
    back = ingest(lake.uri, root, IngestConfig(min_side=16))
    assert back.report["ingested"] == 30 and back.report["decoded"] == 0


def _corrupt_one_object(root_uri: str, result) -> tuple[str, str]:
    """Overwrites one cat image in objects/ with a dog photo's bytes; returns (key, sha)."""
    cats = result.manifest[result.manifest["label"] == "cats"]
    dogs = result.manifest[result.manifest["label"] == "dogs"]
    objects = open_store(root_uri).child("objects")
    key, sha = cats["key"].iloc[0], cats["sha256"].iloc[0]
    objects.put(object_key(sha), objects.get(object_key(dogs["sha256"].iloc[0])))
    return key, sha


@pytest.mark.timeout(120)
def test_a_corrupted_snapshot_object_is_an_error_naming_the_key(tmp_path, store_uri):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=20, size=32, seed=38), lake)
    root = store_uri + "/ds"
    result = ingest(lake.uri, root)
    key, sha = _corrupt_one_object(root, result)
    for config in (IngestConfig(), IngestConfig(use_cache=False)):  # cached and full re-ingest
        with pytest.raises(IngestError, match=sha) as err:
            ingest(lake.uri, root, config)
        assert key in str(err.value)
    # The training reader checks every image it reads.
    from components.train.core import TrainError, load_images

    rows = pd.concat([result.split_manifest("train"), result.split_manifest("test")])
    with pytest.raises(TrainError, match=key):
        load_images(rows, 32)
    # Deleting the damaged object and ingesting again restores it from the lake.
    open_store(root).child("objects").delete(object_key(sha))
    repaired = ingest(lake.uri, root)
    assert repaired.version == result.version
    assert load_images(rows, 32).shape == (20, 3, 32, 32)


# --- concurrent ingestions ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_two_ingestions_at_once_publish_one_intact_version(tmp_path, store_uri):
    spec = LakeSpec(n=24, size=32, seed=39)
    lakes = [open_store(tmp_path / "lake_a"), open_store(tmp_path / "lake_b")]
    for lake in lakes:  # byte-identical lakes at two URIs: the same version
        generate(spec, lake)
    root = store_uri + "/ds"
    barrier = threading.Barrier(2, timeout=60)
    results, errors = [None, None], []

    def run(i):
        def at_the_end(done, total):
            if done == total:
                barrier.wait()  # both finish reading together, then race to publish
        try:
            results[i] = ingest(lakes[i].uri, root, IngestConfig(workers=1),
                                progress=at_the_end)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert errors == []
    assert results[0].version == results[1].version
    assert sorted(r.created for r in results) == [False, True]
    store = open_store(root)
    snapshot = f"versions/{results[0].version}"
    for name in ("manifest.csv", "image_stats.csv", "stats.json", "quarantine.csv",
                 "duplicates.csv", "report.json"):
        store.read_published(snapshot, name)  # every file matches its publish checksum
    assert list_versions(root) == [results[0].version]
    assert not list(store.list("locks"))  # the publish lock was released


# --- worker processes end with the ingestion that started them -------------------------------

_KILLED_INGESTION = """
import sys, time
from components.ingest import core

core.PROCESS_MIN_OBJECTS = 1  # decode this small lake in worker processes

def stop_here(done, total):
    print("reading", flush=True)
    time.sleep(600)  # killed here, with its pool's workers alive

if __name__ == "__main__":
    core.ingest(sys.argv[1], sys.argv[2], core.IngestConfig(workers=2), progress=stop_here)
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
@pytest.mark.timeout(120)
def test_killing_an_ingestion_leaves_no_worker_processes_behind(tmp_path):
    import signal
    import subprocess
    import sys

    from components.common.procs import pid_alive
    from components.common.service import wait_until

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=12, size=32, seed=47), lake)
    script = tmp_path / "killed_ingestion.py"
    script.write_text(_KILLED_INGESTION)
    proc = subprocess.Popen([sys.executable, str(script), lake.uri, str(tmp_path / "ds")],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    try:
        assert proc.stdout.readline().strip() == "reading"
        helpers = _descendants(proc.pid)  # the forkserver, 2 workers, the resource tracker
        assert len(helpers) >= 3, helpers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_until(lambda: not any(pid_alive(p) for p in helpers), 60, 0.2)
    still = [p for p in helpers if pid_alive(p)]
    for pid in still:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not still, f"{len(still)} of {len(helpers)} helper processes outlived the ingestion"


# --- a publish cut off by an S3 outage ----------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_ingestion_cut_off_by_an_s3_outage_is_retried_at_once_after_the_store_returns(
        tmp_path, s3_uri, monkeypatch, caplog):
    """The outage starts at the first file of the version; the failed run cannot delete its
    locks, and the rerun in this process takes them over at once (it waited 300 s before)."""
    import logging
    import time

    from components.common.storage import StorageUnavailableError
    from tests.faultproxy import FaultProxy

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=12, size=32, seed=53), lake)
    root = s3_uri + "/ds"

    def first_file_of_the_version(method, path, headers):
        return method == "PUT" and "/versions/" in path and "_PUBLISHING" not in path

    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], trip=first_file_of_the_version) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageUnavailableError, match=proxy.url):
            ingest(lake.uri, root)
        assert proxy.tripped
        proxy.restore()  # the store is back
        store = open_store(root)
        assert list_versions(root) == []  # nothing half-written is visible
        assert [o.key for o in store.list() if "PUBLISHING" in o.key or "locks/" in o.key]
        with caplog.at_level(logging.WARNING, logger="components.common.storage.lock"):
            started = time.monotonic()
            result = ingest(lake.uri, root)
            took = time.monotonic() - started
        assert result.created and list_versions(root) == [result.version]
        for name in ("manifest.csv", "image_stats.csv", "report.json"):
            store.read_published(f"versions/{result.version}", name)  # every checksum holds
        assert not [o.key for o in store.list() if "PUBLISHING" in o.key or "locks/" in o.key]
    taken = [r.getMessage() for r in caplog.records if "Taking over" in r.getMessage()]
    assert len(taken) == 2 and all("in an attempt that ended" in m for m in taken), taken
    # Not a timing test: the rerun waits for no lease (60 s) and no lock bound (300 s); on an
    # idle machine it takes about a second.
    assert took < 60, f"the rerun took {took:.0f} s"
