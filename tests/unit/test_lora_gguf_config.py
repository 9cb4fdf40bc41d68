"""The adapter config llama.cpp's LoRA converter is handed (trainer/export/gguf.py `lora_config`): llama.cpp scales
each LoRA tensor by the file's lora_alpha over that tensor's rank, so the config must say PEFT's scale that way."""

from __future__ import annotations

import math

import pytest

from trainer.export.errors import ExportError
from trainer.export.gguf import lora_config

PLAIN = {"r": 8, "lora_alpha": 16, "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}


def test_plain_lora_is_handed_on_as_it_is():
    assert lora_config(PLAIN) == PLAIN
    ranks = PLAIN | {"rank_pattern": {"q_proj": 4}}  # llama.cpp reads each tensor's rank: alpha / 4 there, as PEFT
    assert lora_config(ranks) == ranks


def test_rslora_becomes_the_alpha_whose_alpha_over_r_is_its_scale():
    out = lora_config(PLAIN | {"use_rslora": True, "alpha_pattern": {"q_proj": 16}})
    assert out["use_rslora"] is False and out["alpha_pattern"] == {}
    assert out["lora_alpha"] / 8 == pytest.approx(16 / math.sqrt(8))


@pytest.mark.parametrize(("change", "named"), [
    ({"use_dora": True}, "DoRA"),
    ({"alpha_pattern": {"q_proj": 32}}, "alpha_pattern"),
    ({"use_rslora": True, "rank_pattern": {"q_proj": 4}}, "rank_pattern"),
])
def test_a_scale_one_alpha_cannot_express_is_refused(change, named):
    with pytest.raises(ExportError, match=named) as refused:
        lora_config(PLAIN | change)
    assert "export.mode: merged" in str(refused.value)
