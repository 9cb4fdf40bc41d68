"""Reading rows: globs, folders, JSONL line numbers, Parquet row indices, compression, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.errors import DataError
from trainer.data.sources import expand, fetch, read_records, scan

BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: Excel and Notepad start the files they save with it


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_keeps_line_numbers_and_bad_json_is_a_bad_row(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.jsonl", ['{"x": 1}', "", '{"x": 2', "[1, 2]", '{"x": 3}'])
    recs = list(read_records(expand(str(f))))
    assert [(r.line, r.row, r.error.reason if r.error else None) for r in recs] == [
        (1, {"x": 1}, None),
        (3, None, "invalid_json"),  # the blank line 2 is not a row
        (4, None, "invalid_json"),
        (5, {"x": 3}, None),
    ]
    assert recs[1].location == f"{f}:3"
    assert "column" in recs[1].error.message
    assert "JSON object" in recs[2].error.message


def test_non_utf8_line_is_a_bad_row(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"x": 1}\n{"x": "\xff"}\n')
    recs = list(read_records(expand(str(f))))
    assert recs[1].error is not None and recs[1].error.reason == "invalid_json"
    assert "UTF-8" in recs[1].error.message


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path: Path) -> None:
    rows = [{"x": 1}, {"x": "é"}, {"x": 3}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows).encode("utf-8")
    (tmp_path / "excel.jsonl").write_bytes(BOM + text)
    (tmp_path / "blank-first.jsonl.gz").write_bytes(gzip.compress(BOM + b"\r\n" + text))  # the mark alone: blank
    (tmp_path / "joined.jsonl").write_bytes(BOM + text + BOM + text)  # two such files put together
    for name, lines in [("excel.jsonl", [1, 2, 3]), ("blank-first.jsonl.gz", [2, 3, 4]),
                        ("joined.jsonl", [1, 2, 3, 4, 5, 6])]:
        files = expand(str(tmp_path / name))
        recs = list(read_records(files))
        assert [r.error for r in recs] == [None] * len(lines), name  # no bad row counted
        assert [r.row for r in recs] == rows * (len(lines) // 3) and [r.line for r in recs] == lines
        assert fetch(files, [r.at for r in scan(files)]) == recs  # read back by cursor: the same rows


def test_glob_expands_sorted_and_reads_in_order(tmp_path: Path) -> None:
    for name in ["train-2.jsonl", "train-10.jsonl", "train-1.jsonl", "other.jsonl"]:
        write_jsonl(tmp_path / name, [json.dumps({"f": name})])
    files = expand(str(tmp_path / "train-*.jsonl"))
    assert [Path(f.uri).name for f in files] == ["train-1.jsonl", "train-10.jsonl", "train-2.jsonl"]
    assert [r.row["f"] for r in read_records(files)] == ["train-1.jsonl", "train-10.jsonl", "train-2.jsonl"]


def test_relative_paths_against_base_dir_and_duplicates_removed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ["{}"])
    files = expand(["a.jsonl", "*.jsonl"], base_dir=tmp_path)
    assert [f.uri for f in files] == [str(tmp_path / "a.jsonl")]


def test_folder_takes_its_data_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", ["{}"])
    write_jsonl(tmp_path / "a.jsonl", ["{}"])
    (tmp_path / "README.md").write_text("not data")
    assert [Path(f.uri).name for f in expand(str(tmp_path))] == ["a.jsonl", "b.jsonl"]


def test_gzip_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"x": 1}\n{"x": 2}\n'))
    assert [r.row for r in read_records(expand(str(f)))] == [{"x": 1}, {"x": 2}]


def test_parquet_rows_with_index(tmp_path: Path) -> None:
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b", "c"], "output": ["1", "2", "3"]}), f, row_group_size=2)
    recs = list(read_records(expand(str(tmp_path / "*.parquet"))))
    assert [(r.line, r.row) for r in recs] == [
        (0, {"instruction": "a", "output": "1"}),
        (1, {"instruction": "b", "output": "2"}),
        (2, {"instruction": "c", "output": "3"}),
    ]
    assert recs[2].location == f"{f}:row 2"


@pytest.mark.parametrize(
    ("uri", "expect"),
    [
        ("nothing-*.jsonl", "no files match 'DIR/nothing-*.jsonl'"),
        ("missing.jsonl", "'DIR/missing.jsonl' not found"),
        ("data.csv", "cannot tell the format of 'DIR/data.csv'"),
    ],
)
def test_errors_name_the_uri(tmp_path: Path, uri: str, expect: str) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError) as e:
        expand(str(tmp_path / uri), field="data.eval")
    assert str(e.value).startswith("data.eval: ")
    assert expect.replace("DIR", str(tmp_path)) in str(e.value)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no .jsonl or .parquet files"):
        expand(str(tmp_path))


def test_broken_parquet_is_a_data_error(tmp_path: Path) -> None:
    f = tmp_path / "x.parquet"
    f.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"cannot read .*x\.parquet"):
        list(read_records(expand(str(f))))


def test_sources_and_formats_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, trainer.data.sources, trainer.data.formats, trainer.data.stripes, trainer.data; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
