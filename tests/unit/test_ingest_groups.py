"""ml.ingest.group_files: ingest tasks bounded by files and (estimated) rows per task, order kept."""

from __future__ import annotations

from pathlib import Path

from ml.ingest import ROW_BYTES_ESTIMATE, group_files
from ml.settings import Settings


def _files(tmp_path: Path, sizes: list[int]) -> list[str]:
    out = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"events_{i:03d}.csv"
        p.write_bytes(b"x" * size)
        out.append(str(p))
    return out


def test_groups_bounded_by_files_and_rows(tmp_path: Path) -> None:
    per_row = int(ROW_BYTES_ESTIMATE["csv"])
    s = Settings(state_dir=tmp_path, ingest_group_max_files=4, ingest_group_max_rows=1000)
    small = _files(tmp_path, [100 * per_row] * 10)  # 63 small files: a handful of tasks
    groups = group_files(small, s)
    assert [len(g) for g in groups] == [4, 4, 2] and sum(groups, []) == small
    (tmp_path / "b").mkdir()
    big = _files(tmp_path / "b", [600 * per_row, 600 * per_row, 5000 * per_row, 10 * per_row, 10 * per_row])
    groups = group_files(big, s)
    assert [len(g) for g in groups] == [1, 1, 1, 2]  # 600 + 600 > 1000; a file above the bound is alone
    assert sum(groups, []) == big
    assert group_files([], s) == []
