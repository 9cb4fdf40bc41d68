"""A pass's shuffled sequence of rows (trainer/data/stripes.py): files cut into stripes that cover
every row once, a seeded interleaving (trainer/data/seeded.py) that continues exactly from any
saved position, line numbers of rows read from the middle of a file (trainer/data/jsonl.py), and a
plan whose size does not grow with the data."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.errors import DataError
from trainer.data.jsonl import Lines
from trainer.data.records import SourceFile
from trainer.data.seeded import permuted
from trainer.data.sources import expand, fetch, scan
from trainer.data.stripes import ACTIVE, STRIPE_BYTES, Interleave, Plan, Position


def write_files(folder: Path) -> list[SourceFile]:
    """JSONL with blank lines, lines longer than a stripe and no final newline; an empty file;
    gzip JSONL; Parquet with many row groups and with one."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    text = []
    for i in range(300):
        text.append(json.dumps({"i": i, "pad": "x" * (5000 if i % 37 == 0 else rng.randrange(80))}))
        if i % 11 == 0:
            text.append("")
    (folder / "a.jsonl").write_text("\n".join(text), encoding="utf-8")  # no newline after the last row
    (folder / "e.jsonl").write_text("", encoding="utf-8")
    (folder / "b.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"i": i}) + "\n" for i in range(300, 350)).encode()))
    noise = [{"i": i, "pad": "".join(rng.choices("abcdefghij", k=300))} for i in range(350, 450)]
    pq.write_table(pa.Table.from_pylist(noise), folder / "c.parquet", row_group_size=7)  # several stripes
    pq.write_table(pa.Table.from_pylist([{"i": i} for i in range(450, 470)]), folder / "d.parquet")
    return expand(str(folder))


def plan_of(files: list[SourceFile]) -> Plan:
    return Plan(files, [f.fs.size(f.path) for f in files])


def content(rows: Any) -> list[Any]:
    return [r.record.row["i"] if r.record.row else r.record.error for r in rows]


def test_permuted_is_a_permutation_drawn_by_its_key() -> None:
    for n in (1, 2, 3, 5, 16, 17, 100, 1000):
        for k in (0, 1, 2**63 + 5):
            assert sorted(permuted(i, n, k) for i in range(n)) == list(range(n))
    assert [permuted(i, 100, 1) for i in range(100)] != [permuted(i, 100, 2) for i in range(100)]
    with pytest.raises(ValueError):
        permuted(5, 5, 0)


def test_stripes_cover_every_row_once(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    plan = plan_of(files)
    assert len(plan) == ACTIVE and plan.parts[2] > 1  # small data: ACTIVE stripes, all open at once
    got = list(Interleave(plan, 42, 0, Position()))
    assert [r.at.row for r in got] == list(range(470))
    assert sorted(content(got)) == list(range(470)) == sorted(content(scan(files)))
    assert content(got) != sorted(content(got))
    records = fetch(files, [r.at for r in got])  # every row can be read back by its cursor
    assert [r.row for r in records] == [r.record.row for r in got]


def test_rows_from_the_middle_of_a_file_get_their_line_counted_when_asked(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    truth = {(r.at.file, r.at.offset): r.record.line for r in scan(files)}
    got = [r for r in Interleave(plan_of(files), 42, 0, Position()) if files[r.at.file].kind == "jsonl"]
    assert any(r.at.line == 0 for r in got) and any(r.at.line > 0 for r in got)
    lines = Lines(files)
    for r in sorted(got, key=lambda r: -r.at.offset):  # counting from the nearest offset counted before
        assert (r.at.line or lines.line(r.at.file, r.at.offset)) == truth[r.at.file, r.at.offset]
        assert r.at.line in (0, truth[r.at.file, r.at.offset])


def test_the_sequence_continues_exactly_from_any_position(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    plan = plan_of(files)
    mine = [g for g in range(470) if g % 3 == 1]
    whole = list(Interleave(plan, 7, 2, Position(), lambda g: g % 3 == 1))
    assert [r.at.row for r in whole if r.record is not None] == mine  # others' rows are not parsed
    reader = Interleave(plan, 7, 2, Position(), lambda g: g % 3 == 1)
    for k in range(471):
        if k % 13 == 0 or k > 460:
            saved = Position.from_list(json.loads(json.dumps(reader.position().to_list())))
            assert saved.row == k and len(saved.open) <= ACTIVE
            assert list(Interleave(plan, 7, 2, saved, lambda g: g % 3 == 1)) == whole[k:]
        next(reader, None)


def test_each_pass_and_seed_has_its_own_order(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    plan = plan_of(files)
    orders = [content(Interleave(plan, seed, epoch, Position())) for seed, epoch in ((1, 0), (1, 1), (2, 0))]
    assert orders[0] == content(Interleave(plan, 1, 0, Position()))
    assert orders[0] != orders[1] and orders[0] != orders[2]
    assert all(sorted(o) == list(range(470)) for o in orders)


def test_a_byte_order_mark_is_no_bad_row_in_a_stripe(tmp_path: Path) -> None:
    f = tmp_path / "excel.jsonl"  # large enough to be cut into stripes: the mark is in the first one only
    f.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"i": i, "pad": "x" * 50}) + "\n" for i in range(200)).encode())
    files = expand(str(f))
    got = list(Interleave(plan_of(files), 42, 0, Position()))
    assert sorted(content(got)) == list(range(200))  # a bad row would be a BadRow here
    assert [r.row for r in fetch(files, [r.at for r in got])] == [r.record.row for r in got]


def test_large_data_is_cut_into_bounded_stripes(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    names = [("big.jsonl", "jsonl", 10 * 2**30 + 3), ("small.jsonl", "jsonl", 5 * 2**20),
             ("zipped.jsonl.gz", "jsonl", 100 * 2**20), ("table.parquet", "parquet", 40 * 2**20)]
    files = [SourceFile(str(tmp_path / n), fs, str(tmp_path / n), kind) for n, kind, _ in names]
    plan = Plan(files, [size for *_, size in names])
    assert plan.parts == [1281, 1, 1, 5]  # at most STRIPE_BYTES each; a compressed file is one stripe
    stripes = [plan.stripe(n) for n in range(len(plan))]
    big = [s for s in stripes if s.file == 0]
    assert big[0].start == 0 and big[-1].end is None
    assert all(a.end == b.start for a, b in zip(big, big[1:], strict=False))
    assert max((s.end or names[0][2]) - s.start for s in big) <= STRIPE_BYTES
    assert Position(10**9, 10**5, [(s, 2**40, 0) for s in range(ACTIVE)]).to_list()  # what a state holds: ACTIVE cursors


def test_an_unreadable_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"i": 1}\n')
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    files = expand(str(tmp_path))
    with pytest.raises(DataError, match=r"data.train: cannot read .*x\.parquet"):
        list(Interleave(plan_of(files), 1, 0, Position()))
