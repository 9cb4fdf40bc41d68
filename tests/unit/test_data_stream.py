"""TrainStream on small local files: every row once per pass across ranks and workers, rows
shuffled across the whole pass, exact resume (same and other world sizes), accounting, errors,
and the packing window's cost.

Each row's answer holds a marker `row-00042`; decoding a packed row tells which rows it holds.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from tests.resources import tokenizer_for
from trainer.data import DataError, build_dataset
from trainer.data.shards import fresh, split
from trainer.data.sources import expand, fetch, scan
from trainer.data.stream import TrainStream
from trainer.data.stripes import ACTIVE
from trainer.spec.job import JobSpec

N = 240  # rows of the test data


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer_for("qwen2")


def row(i: int) -> dict[str, Any]:
    words = " ".join(["word"] * (i * 7 % 45))  # varied lengths, so packing has something to do
    return {"messages": [{"role": "user", "content": f"question {i} {words}"},
                         {"role": "assistant", "content": f"row-{i:05d} is the answer"}]}


def lines(rows: range, bad_at: tuple[int, ...] = ()) -> list[str]:
    out = []
    for i in rows:
        if i in bad_at:
            out.append("{not json")
        out.append(json.dumps(row(i)))
    return out


def write_data(folder: Path, bad_at: tuple[int, ...] = ()) -> str:
    """N rows in three files: plain JSONL (with blank lines), gzip JSONL and Parquet (row groups of 16)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_text("\n\n".join(lines(range(0, 100), bad_at)) + "\n", encoding="utf-8")
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines(range(100, 180), bad_at)) + "\n").encode()))
    table = pa.Table.from_pylist([row(i) for i in range(180, N)])
    pq.write_table(table, folder / "c.parquet", row_group_size=16)
    return str(folder / "*")


def spec_for(train: str, **data: Any) -> JobSpec:
    training = data.pop("training", {"max_steps": 10})
    return JobSpec.model_validate({"name": "t", "base_model": "m", "training": training,
                                   "data": {"train": train, "max_seq_len": 256, **data}})


def ids(tok: Any, item: dict[str, list[int]]) -> list[int]:
    return [int(m) for m in re.findall(r"row-(\d{5})", tok.decode(item["input_ids"]))]


def stream(spec: JobSpec, tok: Any, rank: int = 0, world: int = 1, passes: int | None = 1) -> TrainStream:
    return TrainStream(spec, tok, rank=rank, world_size=world, passes=passes, window_rows=4)


def take(s: Any, n: int) -> list[dict[str, list[int]]]:
    return [next(s) for _ in range(n)]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))


# -- reading ---------------------------------------------------------------------------------
def test_scan_resumes_at_any_cursor_and_fetch_reads_single_rows(tmp_path: Path) -> None:
    files = expand(write_data(tmp_path))
    full = list(scan(files))
    assert [r.at.row for r in full] == list(range(N))
    assert full[1].record is not None and full[1].record.line == 3  # a blank line between rows
    for k in (1, 99, 100, 150, 180, 197, N - 1):  # JSONL, file boundary, gzip, Parquet row groups
        tail = list(scan(files, full[k].at))
        assert [r.at for r in tail] == [r.at for r in full[k:]]
        assert [r.record for r in tail] == [r.record for r in full[k:]]
    assert list(scan(files, full[-1].after)) == []
    picked = [full[k].at for k in (200, 5, 120, 181)]
    assert fetch(files, picked) == [full[k].record for k in (200, 5, 120, 181)]
    mine = list(scan(files, mine=lambda g: g % 3 == 1))
    assert [r.at.row for r in mine if r.record is not None] == list(range(1, N, 3))


def test_shares_split_rows_without_overlap_or_loss() -> None:
    rng = random.Random(0)
    for old in range(1, 5):
        for new in range(1, 6):
            shares = [fresh(r, old).after(rng.randrange(30)) for r in range(old)]
            left = {g for g in range(300) if any(g in s for s in shares)}
            parts = [{g for g in range(300) if g in split(shares, j, new)} for j in range(new)]
            assert sum(len(p) for p in parts) == len(left) and set().union(*parts) == left
            assert max(map(len, parts)) - min(map(len, parts)) <= 2 * old  # dealt out evenly


# -- one pass --------------------------------------------------------------------------------
def test_one_pass_trains_every_usable_row_once_and_accounts_for_the_rest(tmp_path: Path, tok: Any) -> None:
    spec = spec_for(write_data(tmp_path, bad_at=(7, 150)), bad_rows={"max_bad_fraction": 0.05})
    s = stream(spec, tok)
    got = [i for item in s for i in ids(tok, item)]
    assert sorted(got) == list(range(N)) and got != sorted(got)  # all of them, in a seeded order
    stats = s.finish()
    assert (stats.rows_read, stats.rows_used, stats.bad_rows, stats.rows_unreached) == (N + 2, N, {"invalid_json": 2}, 0)
    assert stats.rows_read == stats.rows_used + stats.rows_skipped
    where = sorted(e.split(" — ")[0] for e in stats.bad_examples)  # files are read in a seeded order
    assert where == [f"{tmp_path / 'a.jsonl'}:15: invalid_json", f"{tmp_path / 'b.jsonl.gz'}:51: invalid_json"]
    assert stats.packed_rows < N and 0.5 < stats.packing_efficiency <= 1.0


def test_a_byte_order_mark_is_no_bad_row(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "excel.jsonl").write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines(range(40))) + "\n").encode())
    s = stream(spec_for(str(tmp_path / "excel.jsonl")), tok)
    assert sorted(i for item in s for i in ids(tok, item)) == list(range(40))
    stats = s.finish()
    assert (stats.rows_read, stats.rows_used, stats.bad_rows) == (40, 40, {})


def test_same_seed_same_rows_other_seed_other_order(tmp_path: Path, tok: Any) -> None:
    train = write_data(tmp_path)
    a = [ids(tok, x) for x in stream(spec_for(train), tok)]
    b = [ids(tok, x) for x in stream(spec_for(train), tok)]
    c = [ids(tok, x) for x in stream(spec_for(train, training={"max_steps": 10, "seed": 7}), tok)]
    assert a == b and a != c and sorted(sum(a, [])) == sorted(sum(c, []))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_rows_without_overlap_or_loss(tmp_path: Path, tok: Any, world: int) -> None:
    spec = spec_for(write_data(tmp_path))
    per_rank = [[i for x in stream(spec, tok, r, world) for i in ids(tok, x)] for r in range(world)]
    assert sorted(sum(per_rank, [])) == list(range(N))
    assert all(abs(len(p) - N / world) <= 1 for p in per_rank)


def collate_rows(batch: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
    return batch


def test_dataloader_workers_split_a_ranks_rows(tmp_path: Path, tok: Any) -> None:
    spec = spec_for(write_data(tmp_path))
    got = []
    for r in range(2):
        loader = DataLoader(stream(spec, tok, r, 2), batch_size=3, num_workers=2, collate_fn=collate_rows)
        got += [i for batch in loader for x in batch for i in ids(tok, x)]
    assert sorted(got) == list(range(N))


def test_passes_follow_each_other_and_iter_continues(tmp_path: Path, tok: Any) -> None:
    s = stream(spec_for(write_data(tmp_path)), tok, passes=None)
    first = [i for x in take(iter(s), 30) for i in ids(tok, x)]
    rest = [i for x in take(iter(s), 200) for i in ids(tok, x)]  # a new iterator continues where the first stopped
    rows = first + rest
    assert sorted(rows[:N]) == list(range(N)) and sorted(rows[N : 2 * N]) == list(range(N))
    assert rows[:N] != rows[N : 2 * N]  # each pass has its own order
    stats = s.stats()
    assert stats.per_rank[0]["passes"] >= 2 and stats.rows_read == stats.rows_used + stats.rows_unreached


# -- order -----------------------------------------------------------------------------------
def write_sorted(folder: Path, files: int) -> str:
    """1000 rows of source A (rows 0-999) followed by 1000 of source B, in one file or two."""
    folder.mkdir(parents=True, exist_ok=True)
    if files == 1:
        (folder / "ab.jsonl").write_text("\n".join(lines(range(2000))) + "\n", encoding="utf-8")
        return str(folder / "ab.jsonl")
    (folder / "a.jsonl").write_text("\n".join(lines(range(1000))) + "\n", encoding="utf-8")
    (folder / "b.jsonl").write_text("\n".join(lines(range(1000, 2000))) + "\n", encoding="utf-8")
    return str(folder / "*.jsonl")


def a_share_by_quarter(rows: list[int]) -> list[float]:
    q = len(rows) / 4
    return [sum(i < 1000 for i in rows[round(k * q) : round((k + 1) * q)]) / (round((k + 1) * q) - round(k * q))
            for k in range(4)]


@pytest.mark.parametrize(("files", "world"), [(1, 1), (1, 2), (2, 1)])
def test_rows_are_shuffled_across_the_whole_pass(tmp_path: Path, tok: Any, files: int, world: int) -> None:
    """Sorted data (all of source A, then all of B) trains on half A in every quarter of a pass."""
    spec = spec_for(write_sorted(tmp_path, files))
    per_rank = [[i for x in stream(spec, tok, r, world) for i in ids(tok, x)] for r in range(world)]
    assert sorted(sum(per_rank, [])) == list(range(2000))
    quarters = [a_share_by_quarter(rows) for rows in per_rank]
    union = [sum(q[k] * len(rows) for q, rows in zip(quarters, per_rank, strict=True)) / 2000 for k in range(4)]
    assert all(abs(share - 0.5) <= 0.1 for share in union), union  # the ranks together
    assert all(abs(share - 0.5) <= 0.15 for q in quarters for share in q), quarters  # each rank (fewer rows)


def test_each_pass_has_its_own_shuffled_order(tmp_path: Path, tok: Any) -> None:
    s = stream(spec_for(write_sorted(tmp_path, 1)), tok, passes=2)
    rows = [i for x in s for i in ids(tok, x)]
    one, two = rows[:2000], rows[2000:]
    assert sorted(one) == sorted(two) == list(range(2000))
    where = {i: k for k, i in enumerate(two)}
    moved = [abs(k - where[i]) for k, i in enumerate(one)]
    assert sum(moved) / len(moved) > 300  # not the same order (nor one shuffled only within windows)


# -- position --------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [1, 9, 40, 76])  # in a window, at its end, a later window, the next pass
def test_resume_on_the_same_world_size_is_exact(tmp_path: Path, tok: Any, stop: int) -> None:
    spec = spec_for(write_data(tmp_path, bad_at=(3,)), bad_rows={"max_bad_fraction": 0.05})
    uninterrupted = stream(spec, tok, passes=2)
    whole = list(uninterrupted)
    first = stream(spec, tok, passes=2)
    head = take(iter(first), stop)
    state = roundtrip(first.state_dict())
    again = stream(spec, tok, passes=2)
    again.load_state_dict({"ranks": [state]})
    assert head + list(again) == whole
    a, b = uninterrupted.finish(), again.finish()  # the counts travel with the position
    assert (a.rows_read, a.rows_used, a.bad_rows, a.packed_rows, a.tokens_total) == (
        b.rows_read, b.rows_used, b.bad_rows, b.packed_rows, b.tokens_total)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (3, 2), (2, 3)])
def test_resume_on_another_world_size_loses_and_repeats_no_row(tmp_path: Path, tok: Any, before: int,
                                                               after: int) -> None:
    spec = spec_for(write_data(tmp_path))
    old = [stream(spec, tok, r, before, passes=2) for r in range(before)]
    trained = [i for r, s in enumerate(old) for x in take(iter(s), 11 + 4 * r) for i in ids(tok, x)]  # uneven
    states = {"world_size": before, "ranks": [roundtrip(s.state_dict()) for s in old]}
    new = [stream(spec, tok, r, after, passes=2) for r in range(after)]
    for s in new:
        s.load_state_dict(states)
    trained += [i for s in new for x in s for i in ids(tok, x)]
    assert sorted(trained) == sorted(list(range(N)) * 2)  # two whole passes, each row twice
    totals = [s.finish() for s in new]
    assert sum(t.rows_used for t in totals) == 2 * N and sum(t.rows_unreached for t in totals) == 0


def test_resume_mid_pass_of_sorted_data_is_exact_and_the_state_small(tmp_path: Path, tok: Any) -> None:
    """Sorted data, stopped in the middle of a pass on 2 ranks: the state holds at most ACTIVE open
    stripes' cursors (not the rows), and the continuation is the uninterrupted one's."""
    spec = spec_for(write_sorted(tmp_path, 1))
    whole = [list(stream(spec, tok, r, 2)) for r in range(2)]
    cut = [stream(spec, tok, r, 2) for r in range(2)]
    head = [take(iter(s), 80) for s in cut]
    states = [roundtrip(s.state_dict()) for s in cut]
    for state in states:
        (work,) = state["work"]
        row, _, open_ = work["position"]
        assert 300 < row < 1700 and 1 < len(open_) <= ACTIVE  # mid-pass, several stripes open
        assert len(json.dumps(state)) < 12_000  # cursors of the window's pending rows, not of the pass
    for r in range(2):
        again = stream(spec, tok, r, 2)
        again.load_state_dict({"ranks": states})
        assert head[r] + list(again) == whole[r]


def test_a_position_of_the_unshuffled_format_is_refused(tmp_path: Path, tok: Any) -> None:
    train = write_data(tmp_path)
    s = stream(spec_for(train), tok)
    take(iter(s), 3)
    state = roundtrip(s.state_dict()) | {"format": "kubetune.train-stream/1"}
    with pytest.raises(DataError, match="not a data position of this kubetune version"):
        stream(spec_for(train), tok).load_state_dict(state)


def test_state_from_other_data_is_refused(tmp_path: Path, tok: Any) -> None:
    train = write_data(tmp_path)
    s = stream(spec_for(train), tok)
    take(iter(s), 3)
    state = roundtrip(s.state_dict())
    with pytest.raises(DataError, match="training.seed changed since the checkpoint"):
        stream(spec_for(train, training={"max_steps": 10, "seed": 1}), tok).load_state_dict(state)
    with (tmp_path / "a.jsonl").open("a") as f:
        f.write(json.dumps(row(999)) + "\n")
    with pytest.raises(DataError, match=r"the files' contents \(sizes\) changed"):
        stream(spec_for(train), tok).load_state_dict(state)
    with pytest.raises(DataError, match="needs all 2 data positions"):
        two = roundtrip(stream(spec_for(train), tok, 1, 2).state_dict())
        stream(spec_for(train), tok).load_state_dict({"ranks": [two]})


# -- accounting and errors -------------------------------------------------------------------
def test_rows_left_in_the_packing_window_are_counted_as_not_reached(tmp_path: Path, tok: Any) -> None:
    s = stream(spec_for(write_data(tmp_path)), tok)
    take(iter(s), 5)
    stats = s.finish()
    assert stats.rows_unreached > 0 and stats.rows_read == stats.rows_used + stats.rows_skipped
    assert stats.as_metrics()["data/rows_unreached"] == stats.rows_unreached
    assert "training stopped (training.max_steps)" in stats.report()


def test_count_pass_turns_epochs_into_steps(tmp_path: Path, tok: Any) -> None:
    spec = spec_for(write_data(tmp_path), training={"epochs": 2, "per_device_batch_size": 2, "grad_accum": 3})
    s = stream(spec, tok, passes=None)
    counted = s.count_pass()
    assert counted.rows_used == N and s.stats().rows_read == 0  # the count keeps nothing
    assert s.steps_left() == math.ceil(2 * counted.packed_rows / 6)
    take(iter(s), 12)  # two optimizer steps' rows
    assert s.steps_left() == math.ceil(2 * counted.packed_rows / 6) - 2
    assert stream(spec_for(write_data(tmp_path)), tok).steps_left() is None  # max_steps decides


def test_bad_rows_fail_the_count_with_their_location(tmp_path: Path, tok: Any) -> None:
    train = write_data(tmp_path, bad_at=(5, 6, 7))
    with pytest.raises(DataError, match=r"3 of 243 rows are bad"):
        stream(spec_for(train, training={"epochs": 1}), tok).count_pass()
    with pytest.raises(DataError, match=rf"bad row in data.train at {re.escape(str(tmp_path))}/a.jsonl:(11|15|19): "
                                        "invalid_json"):  # the first of the three in the pass's shuffled order
        list(stream(spec_for(train, bad_rows={"policy": "fail"}), tok, passes=None))


def test_a_rank_without_rows_is_an_error_not_a_hang(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "one.jsonl").write_text(json.dumps(row(1)) + "\n")
    spec = spec_for(str(tmp_path / "one.jsonl"))
    assert next(iter(stream(spec, tok, 0, 2, passes=None)))["input_ids"]
    with pytest.raises(DataError, match="no rows at all for rank 1 of 2"):
        next(iter(stream(spec, tok, 1, 2, passes=None)))


def test_window_packing_stays_close_to_a_global_best_fit(tmp_path: Path, tok: Any) -> None:
    """The documented price of flat memory: rows a little less full than one best fit over all samples."""
    rng = random.Random(0)
    words = ["the", "a", "model", "data", "row", "token", "stream", "pack", "window", "memory"]
    path = tmp_path / "varied.jsonl"
    with path.open("w") as f:
        for _ in range(1500):
            q = " ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(3, 0.8))))
            a = " ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(4, 0.9))))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    spec = spec_for(str(path), max_seq_len=1024, too_long="truncate")
    _, whole = build_dataset(spec, tok)
    s = TrainStream(spec, tok, passes=1)
    for _ in s:
        pass
    windowed = s.stats()
    assert windowed.rows_used == whole.rows_used
    assert whole.packing_efficiency - 0.03 <= windowed.packing_efficiency <= whole.packing_efficiency
