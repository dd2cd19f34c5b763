"""File discovery, naming and moving rules of the ingest step (local filesystem and fsspec's memory://)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ml.errors import PipelineError
from ml.locations import discover_files, file_format, free_uri, is_under, put_file
from ml.settings import Settings


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", ("csv", None)),
        ("A.CSV.GZ", ("csv", "gzip")),
        ("x.parquet", ("parquet", None)),
        ("x.pq", ("parquet", None)),
    ],
)
def test_file_format(name: str, expected: tuple[str, str | None]) -> None:
    assert file_format(name) == expected


def test_file_format_rejects_others() -> None:
    with pytest.raises(PipelineError, match="unsupported file type"):
        file_format("notes.txt")


def test_discover_skips_uploads_in_progress_and_processed_folders(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, archive_url=str(tmp_path / "landing" / "archive"))
    landing = Path(s.location("landing"))
    for rel in ("b/events_2019-10-02.csv", "events_2019-10-01.csv", "events_20191001.parquet", ".events_x.csv",
                "_tmp/events_2019-10-01.csv", "archive/events_2019-10-01.csv", "readme.txt", "c.csv.gz"):
        (landing / rel).parent.mkdir(parents=True, exist_ok=True)
        (landing / rel).write_bytes(b"x")
    found = [Path(p).relative_to(landing).as_posix() for p in discover_files(s)]
    assert found == ["b/events_2019-10-02.csv", "c.csv.gz", "events_2019-10-01.csv", "events_20191001.parquet"]
    dated = [Path(p).name for p in discover_files(s, date=dt.date(2019, 10, 1))]
    assert dated == ["events_2019-10-01.csv", "events_20191001.parquet"]
    assert len(discover_files(s, limit=2)) == 2
    one = landing / "c.csv.gz"
    assert discover_files(s, str(one)) == [str(one)]
    with pytest.raises(PipelineError, match="nowhere: no such file or folder"):  # issue 15: an explicit path must exist
        discover_files(s, str(tmp_path / "nowhere"))
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(PipelineError, match="unsupported file type"):  # ... and be a supported file
        discover_files(s, str(tmp_path / "x.bin"))
    assert discover_files(s.model_copy(update={"landing_url": str(tmp_path / "fresh")})) == []  # no landing yet


def test_is_under() -> None:
    assert is_under("/a/b/c.csv", "/a/b")
    assert not is_under("/a/bc/c.csv", "/a/b")
    assert is_under("s3://bkt/landing/x.csv", "s3://bkt/landing/")
    assert not is_under("s3://bkt/landing2/x.csv", "s3://bkt/landing")


def test_moves_and_name_collisions_on_object_storage() -> None:
    """memory:// stands in for s3:// (same fsspec interface)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/land/x.csv", b"one")
    dst = free_uri("memory://quar", "x.csv", "a" * 64)
    assert dst == "memory://quar/x.csv"
    put_file("memory://land/x.csv", dst, b"one", move=True)
    assert fs.cat_file("/quar/x.csv") == b"one" and not fs.exists("/land/x.csv")
    # another file of the same name but other content gets a checksum prefix; the same content reuses the name
    assert free_uri("memory://quar", "x.csv", "b" * 64) == "memory://quar/bbbbbbbbbbbb-x.csv"
    import hashlib

    assert free_uri("memory://quar", "x.csv", hashlib.sha256(b"one").hexdigest()) == "memory://quar/x.csv"
    s = Settings(landing_url="memory://land", archive_url="memory://arch", quarantine_url="memory://quar")
    fs.pipe("/land/d/events_2019-10-03.csv", b"z")
    (found,) = discover_files(s)
    assert found == "memory:///land/d/events_2019-10-03.csv" and is_under(found, s.location("landing"))
    fs.rm("/quar", recursive=True)
    fs.rm("/land", recursive=True)


def test_a_validating_child_killed_between_files_is_replaced(rees46_sample: Path, tmp_path: Path) -> None:
    """The child dies while idle (killed for memory between two files): the next file gets a new child and
    validates; nothing falls back to validating in this process."""
    import os
    import signal
    import time

    from ml.ingest import IngestResult, _Checker, _Validated

    s = Settings(state_dir=tmp_path, data_docs_enabled=False, row_count_min_history=10**6)
    raw = b"\n".join(rees46_sample.read_bytes().split(b"\n")[:101]) + b"\n"

    def step(name: str) -> _Validated:
        return _Validated(uri=str(tmp_path / name), name=name, fmt="csv", raw=raw, in_landing=False, started=0.0,
                          result=IngestResult(file_name=name, source_uri=name, status="duplicate"), bounds=None,
                          now=None, compression=None)

    with _Checker(s, processes=True) as check:
        assert check(step("a.csv")).report.success
        (first,) = check._pool._processes  # the one child, by pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not check._pool._broken:  # the executor notices the death on its own thread
            assert time.monotonic() < deadline
            time.sleep(0.05)
        checked = check(step("b.csv"))
        assert checked.report.success and checked.table is not None and checked.table.num_rows == 100
        assert check.processes and set(check._pool._processes) - {first}  # a new child did it
