"""`Store.put_new`: of writers racing to create one key, exactly one wins, on disk and on S3.

Approval decisions and release claims rely on it (recorder/approvals.py): the
first decision stands, and an approved statement runs once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hoopgw.recorder.store import LocalStore, S3Store, Store

WRITERS = 8


def race(store: Store, key: str) -> list[bool]:
    barrier = threading.Barrier(WRITERS)
    results: list[bool] = [False] * WRITERS

    def write(index: int) -> None:
        barrier.wait(30)
        results[index] = store.put_new(key, b"writer %d" % index)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("moto_s3")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "conditional", endpoint_url=endpoint)


def test_exactly_one_racing_writer_creates_a_key(store: Store) -> None:
    for round_ in range(5):
        key = f"approvals/race-{round_}.decision.json"
        results = race(store, key)
        assert results.count(True) == 1, results
        assert store.get(key) == b"writer %d" % results.index(True)


def test_an_existing_key_is_left_as_it_is(store: Store) -> None:
    store.put("approvals/x.json", b"first")
    assert store.put_new("approvals/x.json", b"second") is False
    assert store.get("approvals/x.json") == b"first"
    assert store.put_new("approvals/y.json", b"new") is True
    assert store.get("approvals/y.json") == b"new"
    assert [key for key in store.list("approvals/") if "tmp" in key] == []


def test_a_local_put_new_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_new("a/b.json", b"1")
    store.put_new("a/b.json", b"2")
    assert sorted(path.name for path in (tmp_path / "store" / "a").iterdir()) == ["b.json"]
