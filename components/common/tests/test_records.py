"""The numbered record log every numbered log uses: create-only, append-only, one key format,
one parser; on both storage backends."""

from __future__ import annotations

import threading

import pytest

from components.common.records import RecordLog, actor, record_name, record_number
from components.common.storage import open_store


def test_one_key_format_and_one_parser():
    assert record_name(12) == "00000012.json"
    assert record_number("a/b/00000012.json") == record_number("00000012.json") == 12
    assert record_number("pets/claims/12") == 12  # the registry's version claims: bare names
    assert record_number("0001.json") == 1  # older delivery rounds had 4 digits
    for other in ("a/b/_PUBLISHED", "12.jsonl", "x12.json", "12.json.tmp", "a/", ""):
        assert record_number(other) is None, other


def test_append_numbers_records_in_order_and_never_overwrites(store_uri):
    store = open_store(store_uri)
    log = RecordLog(store, "m/releases")
    assert (log.numbers(), log.last(), log.records()) == ([], 0, [])
    assert log.append({"what": "first"}) == {"what": "first", "seq": 1}
    assert log.append({"what": "second"})["seq"] == 2
    assert [o.key for o in store.list("m/releases")] == ["m/releases/00000001.json",
                                                         "m/releases/00000002.json"]
    assert not log.create(2, {"what": "not over the second"})
    assert log.read(2) == {"what": "second", "seq": 2}
    # Records in a subfolder and other files are not the log's own.
    store.put_json("m/releases/00000003.json/x", {})
    store.put_json("m/releases/sub/00000009.json", {"what": "elsewhere"})
    store.put_json("m/releases/notes.json", {})
    assert [r["what"] for r in log.records()] == ["first", "second"]
    assert log.numbers() == [1, 2]


def test_a_writer_that_loses_a_number_takes_the_next(store_uri):
    log = RecordLog(open_store(store_uri), "gov/audit")
    log.create(1, {"who": "other"})
    log.create(2, {"who": "other"})
    # The record can be built from its number (an alias move names the move before it).
    made = log.append(lambda n: {"previous": log.read(n - 1)["seq"] if n > 1 else None})
    assert made == {"previous": 2, "seq": 3}


def test_numbers_sort_as_numbers_and_old_key_forms_still_read(tmp_path):
    store = open_store(tmp_path.as_uri())
    store.put_json("d/0002.json", {"n": 2})  # written before the one format
    store.put_json("d/0010.json", {"n": 10})
    log = RecordLog(store, "d")
    assert log.append({"n": 11})["seq"] == 11
    assert [r["n"] for r in log.records()] == [2, 10, 11]
    assert log.read(10) == {"n": 10}
    claims = RecordLog(store, "pets/claims", bare_names=True)
    store.put("pets/claims/1", b'{"by": "old"}')
    assert claims.append({"by": "new"})["seq"] == 2
    assert [o.key for o in store.list("pets/claims")] == ["pets/claims/1", "pets/claims/2"]
    assert [r["by"] for r in claims.records()] == ["old", "new"]


@pytest.mark.timeout(120)
def test_concurrent_appends_get_distinct_numbers(store_uri):
    log = RecordLog(open_store(store_uri), "labels/req/0")
    got, errors = [], []

    def append(i):
        try:
            got.append(log.append({"i": i})["seq"])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(1, 9))
    assert sorted(r["i"] for r in log.records()) == list(range(8))


def test_actor_names_who_acts(monkeypatch):
    monkeypatch.delenv("MLOPS_ACTOR", raising=False)
    monkeypatch.setenv("KFP_RUN_ID", "run-7")
    assert actor() == "kfp-run:run-7"
    monkeypatch.setenv("MLOPS_ACTOR", "alice")
    assert actor() == "alice"
