"""Trained tokens/s and MFU in every run (trainer/tracking/speed.py): the meter's counts against a per-sample loop
over real collated batches, and a short training run whose MLflow run and output carry both."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer.data.collator import Collator
from trainer.data.render import IGNORE
from trainer.spec import flops
from trainer.tracking.speed import Peak, Speed, batch_counts, measure_cpu_peak

PAD = 7
TOKENIZER = SimpleNamespace(pad_token_id=PAD, eos_token_id=2)


def sample(length: int, labelled: int, start: int = 10) -> dict[str, list[int]]:
    """One sample: `length` tokens (never the pad id), its last `labelled` ones with labels."""
    ids = list(range(start, start + length))
    return {"input_ids": ids, "labels": [IGNORE] * (length - labelled) + ids[length - labelled:],
            "position_ids": list(range(length))}


def packed(*samples: dict[str, list[int]]) -> dict[str, list[int]]:
    return {key: [t for s in samples for t in s[key]] for key in ("input_ids", "labels", "position_ids")}


def naive(rows: list[list[tuple[int, int]]], windows: tuple[int | None, ...]) -> list[int]:
    """[labels, tokens, keys per window] from each sample's (length, labelled) alone."""
    samples = [s for row in rows for s in row]
    return [sum(lab for _, lab in samples), sum(n for n, _ in samples),
            *(sum(flops.attended_keys(n, w) for n, _ in samples) for w in windows)]


@pytest.mark.parametrize("padding_free", [False, True])
def test_packed_batches_count_each_sample_and_no_padding(padding_free: bool) -> None:
    rows = [[(3, 2), (5, 5), (1, 0)], [(4, 1)], [(9, 3)]]  # rows of unequal length: two are padded
    items = [packed(*(sample(n, lab, start=10 + 20 * i) for i, (n, lab) in enumerate(row))) for row in rows]
    batch = Collator(TOKENIZER, packing=True, padding_free=padding_free)(items)
    assert int((batch["input_ids"] == PAD).sum()) == (0 if padding_free else 5)  # the 4-token row padded to 9
    windows = (None, 2, 4)
    assert batch_counts(batch, PAD, windows).tolist() == naive(rows, windows)


def test_padding_that_is_there_is_not_counted() -> None:
    rows = [[(2, 1), (3, 3)], [(12, 6)]]  # the first row gets 7 padding slots, a segment of its own
    items = [packed(*(sample(n, lab) for n, lab in row)) for row in rows]
    batch = Collator(TOKENIZER, packing=True)(items)
    assert int((batch["input_ids"] == PAD).sum()) == 7
    assert batch_counts(batch, PAD, (None, 3)).tolist() == naive(rows, (None, 3))


def test_unpacked_batches_count_by_their_attention_mask() -> None:
    rows = [[(6, 2)], [(2, 2)], [(11, 0)]]
    batch = Collator(TOKENIZER, packing=False)([sample(n, lab) for (n, lab), in rows])
    assert "attention_mask" in batch
    assert batch_counts(batch, PAD, (None, 5)).tolist() == naive(rows, (None, 5))


def test_mfu_is_the_windows_model_flops_over_time_and_peak() -> None:
    cost = flops.from_config({"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                              "head_dim": 32, "vocab_size": 300, "sliding_window": 4,
                              "layer_types": ["sliding_attention", "full_attention"]})
    rows = [[(6, 3), (5, 2)], [(9, 4)]]
    batch = Collator(TOKENIZER, packing=True)([packed(*(sample(n, lab) for n, lab in row)) for row in rows])
    for labelled_head in (True, False):
        speed = Speed(cost, Peak(2e9, "test"), labelled_head, PAD)
        speed.add(batch)
        speed.add(batch)
        counts = speed.take(torch.device("cpu")).tolist()
        labels, tokens, full, sliding = (2 * c for c in naive(rows, (None, 4)))
        assert speed.kinds == (4, None)  # the layers' windows, in layer order
        assert counts == [labels, tokens, sliding, full, 0, 0, 0, 0]  # then the forward-only rows': none
        done = cost.train_flops(tokens, labels if labelled_head else tokens, {None: full, 4: sliding})
        rates = speed.window(counts, 0.5, world_size=2)
        assert rates["mfu"] == pytest.approx(done / 0.5 / 2 / 2e9)
        assert rates["model_tflops"] == pytest.approx(done / 0.5 / 2 / 1e12)
        assert speed.summary(2) == pytest.approx({"tokens_per_second": labels / 0.5, "mfu": rates["mfu"]})
        assert speed.take(torch.device("cpu")).tolist() == [0] * 8  # taken: the next window starts empty


def test_rows_run_forward_only_cost_a_third_of_trained_ones() -> None:
    """A preference step's reference forward (or KTO's KL rows): no backward, so FORWARD / TRAIN of the FLOPs."""
    cost = flops.from_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "vocab_size": 300,
                              "num_hidden_layers": 2, "num_attention_heads": 4})
    rows = [[(6, 2)], [(4, 3)]]
    batch = Collator(TOKENIZER, packing=False)([sample(n, lab) for (n, lab), in rows])
    labels, tokens, keys = naive(rows, (None,))
    for labelled_head in (True, False):
        speed = Speed(cost, Peak(1e12, "test"), labelled_head, PAD)
        speed.add(batch)
        speed.add(batch, forward_only=True)
        counts = speed.take(torch.device("cpu")).tolist()
        assert counts == [labels, tokens, keys] * 2
        one = cost.train_flops(tokens, labels if labelled_head else tokens, {None: keys})
        rates = speed.window(counts, 1.0, world_size=1)
        assert rates["model_tflops"] * 1e12 == pytest.approx(one + one * flops.FORWARD / flops.TRAIN, rel=1e-9)
        assert speed.summary(1)["tokens_per_second"] == labels  # trained tokens: the forward-only rows are not


def test_a_cpu_peak_that_training_exceeds_is_measured_again() -> None:
    cost = flops.from_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "vocab_size": 300,
                              "num_hidden_layers": 2, "num_attention_heads": 4})
    measured, said = iter([(3e9, "again"), (1e9, "lower")]), []
    speed = Speed(cost, Peak(1e9, "at start-up", lambda: next(measured)), True, PAD, said.append)
    done = cost.train_flops(100, 50, {None: 5050})
    first = speed.window([50, 100, 5050, 0, 0, 0], done / 2e9, world_size=1)  # 2 GFLOP/s: above the 1 measured at start-up
    assert first["peak_flops"] == 3e9 and first["mfu"] == pytest.approx(2 / 3) and "measured again" in said[0]
    second = speed.window([50, 100, 5050, 0, 0, 0], done / 4e9, world_size=1)  # above again: the lower measurement is not kept
    assert second["peak_flops"] == 3e9 and second["mfu"] == pytest.approx(4 / 3)
    assert "peak_flops" not in speed.window([50, 100, 5050, 0, 0, 0], done / 1e9, world_size=1)  # below: nothing measured
    assert speed.summary(1)["mfu"] == pytest.approx(3 * done / (done / 2e9 + done / 4e9 + done / 1e9) / 3e9)


def test_the_cpu_peak_is_a_real_matmul_rate() -> None:
    import time

    rate, how = measure_cpu_peak(128, budget=0.2)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    started = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    slowest_plausible = 5 * 2 * 256**3 / (time.perf_counter() - started) / 20
    assert rate > slowest_plausible and "float32 matmuls 128² and 256²" in how


def test_a_training_run_logs_tokens_per_second_and_mfu(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.unit.test_train import write_spec
    from trainer.train import loop as train

    spec_path = write_spec(tmp_path, training={"max_steps": 7, "logging_steps": 3}, eval={"num_samples": 0})
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("KUBETUNE_WORK_DIR", str(tmp_path / "work"))
        assert train.main(["--spec", str(spec_path)]) == 0
    out = printed.getvalue()
    marker = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    history = {key: sorted(client.get_metric_history(marker["run_id"], key), key=lambda m: m.step)
               for key in ("mfu", "tokens_per_second", "model_tflops", "peak_flops", "flops_per_token",
                           "train_mfu", "train_tokens_per_second")}
    assert [m.step for m in history["mfu"]] == [1, 3, 6] == [m.step for m in history["tokens_per_second"]]
    assert all(0 < m.value < 1 for m in history["mfu"]), history["mfu"]
    for mfu, tflops in zip(history["mfu"], history["model_tflops"], strict=True):  # against the peak of that step
        peak = [p.value for p in history["peak_flops"] if p.step <= mfu.step][-1]  # measured again when exceeded
        assert mfu.value == pytest.approx(tflops.value * 1e12 / peak)
    assert 0 < marker["mfu"] < 1 and marker["tokens_per_second"] > 0  # the run's, for `launch submit --local`
    assert history["train_mfu"][0].value == pytest.approx(marker["mfu"])
    assert "MFU against" in out and "measured: best of" in out  # said once, with the convention
    lines = [line for line in out.splitlines() if line.startswith("[train] step")]
    assert len(lines) == 3 and all(" tokens/s " in line and " MFU " in line for line in lines), lines
    assert f"trained tokens/s, MFU {marker['mfu']:.1%}" in out


def test_launch_submit_local_ends_with_the_runs_speed(tmp_path: Path) -> None:
    from launcher.local_job import result_lines

    sub = SimpleNamespace(spec=SimpleNamespace(output=SimpleNamespace(uri=str(tmp_path))))
    marker = {"run_id": "r1", "tracking_uri": "sqlite:///x.db", "steps": 30, "final_loss": 0.5}
    (tmp_path / "_SUCCESS").write_text(json.dumps(marker | {"tokens_per_second": 1234.5, "mfu": 0.4231}))
    assert "speed:      1,234 trained tokens/s, MFU 42.3%" in result_lines(sub)  # type: ignore[arg-type]
    (tmp_path / "_SUCCESS").write_text(json.dumps(marker | {"tokens_per_second": 99.0}))  # a GPU not in the catalog
    assert "speed:      99 trained tokens/s, MFU not known (see the training log)" in result_lines(sub)  # type: ignore[arg-type]
    (tmp_path / "_SUCCESS").write_text(json.dumps(marker))  # a run before MFU existed: no speed line
    assert not any(line.startswith("speed:") for line in result_lines(sub))  # type: ignore[arg-type]
