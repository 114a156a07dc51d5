"""The local directory store and store URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hoopgw.recorder.store import KeyNotFound, LocalStore, S3Store, Store, StoreError, open_store


def test_local_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    assert isinstance(store, Store)
    keys = ["b/2.json", "a/x/1.bin", "a/x/10.bin", "a/y.bin", "top.bin"]
    for key in keys:
        store.put(key, key.encode())
    assert store.get("a/x/1.bin") == b"a/x/1.bin"
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("a/")) == ["a/x/1.bin", "a/x/10.bin", "a/y.bin"]
    assert list(store.list("a/x/1")) == ["a/x/1.bin", "a/x/10.bin"]
    assert list(store.list("nothing/here/")) == []
    assert store.exists("a/y.bin") and not store.exists("a/z.bin")
    store.put("a/y.bin", b"replaced")
    assert store.get("a/y.bin") == b"replaced"
    store.delete("a/y.bin")
    store.delete("a/y.bin")
    assert not store.exists("a/y.bin")
    with pytest.raises(KeyNotFound):
        store.get("a/y.bin")
    leftovers = [name for _, _, names in os.walk(store.root) for name in names if ".tmp-" in name]
    assert leftovers == []


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a/.tmp-x", "a\x00b", "a/"]
)
def test_local_store_refuses_keys_that_could_escape(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "archive")
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x")


def test_local_store_ignores_temp_files_when_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    store.put("d/real.json", b"1")
    (store.root / "d" / ".tmp-abandoned").write_bytes(b"half")
    assert list(store.list("d/")) == ["d/real.json"]


def test_local_store_write_failure_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    (store.root / "blocked").write_bytes(b"a file where a directory should be")
    with pytest.raises(StoreError, match="cannot"):
        store.put("blocked/inside/key", b"x")


def test_open_store_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_store(f"file://{tmp_path}/abs")
    assert isinstance(absolute, LocalStore) and absolute.root == tmp_path / "abs"
    single_slash = open_store(f"file:{tmp_path}/single")
    assert isinstance(single_slash, LocalStore) and single_slash.root == tmp_path / "single"
    monkeypatch.chdir(tmp_path)
    relative = open_store("file:var/recordings")
    assert isinstance(relative, LocalStore)
    assert relative.root == tmp_path / "var" / "recordings"


def test_open_store_s3_url_needs_no_network() -> None:
    store = open_store("s3://bucket/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bucket", "some/prefix")
    bare = open_store("s3://bucket", s3_endpoint_url="http://127.0.0.1:1")
    assert isinstance(bare, S3Store) and bare.prefix == ""


@pytest.mark.parametrize(
    "url",
    ["ftp://host/dir", "/plain/path", "s3://", "file:", "file://otherhost/dir", "gs://b/p"],
)
def test_open_store_refuses_other_urls_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "file:///abs/dir" in message and "s3://bucket" in message


def test_open_store_does_not_echo_credentials_in_urls() -> None:
    with pytest.raises(ValueError) as caught:
        open_store("https://user:hunter2@example.com/x")
    assert "hunter2" not in str(caught.value)
