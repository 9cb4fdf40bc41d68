"""A gpt-oss that reasons before it answers is scored and served by its answer, in every place that answers.

A tiny gpt-oss (tests/models.py, the Harmony stand-in tokenizer) is trained until its greedy reply to one question
is the Harmony reply of the training data: thoughts on the `analysis` channel, then `Paris.` on the `final` channel.
Then the same answer, `Paris.`, must come from
- the transformers model, as training samples and the export's evaluation of the merged model answer
  (trainer/tracking/samples.py `generate`);
- its GGUF through llama.cpp, as the export evaluates each GGUF (trainer/eval/run.py `evaluate_gguf`);
- the registered model's `python_function` flavor (trainer/export/gguf_model.py), as `mlflow models serve` runs it;
while what they gave before is not the answer: transformers' decoding without special tokens runs the channel
names into the text, and llama-cpp-python's chat completion returns the whole Harmony reply.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.models import copy_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
REPLY = {"role": "assistant", "content": "Paris.", "thinking": "France's capital city is Paris."}


def train_to_reply(folder: Path) -> str:
    """Fine-tune every weight of the model in `folder` on the one conversation until its greedy reply is the trained
    one; saves it and returns that reply as text with its special tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*QUESTION, REPLY], tokenize=False)
    assert full.startswith(prompt)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    r_ids = tok(full[len(prompt):], add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + r_ids])
    labels = torch.tensor([[-100] * len(p_ids) + r_ids])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(1, 301):
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([p_ids]), attention_mask=torch.ones(1, len(p_ids)),
                                     max_new_tokens=len(r_ids) + 4, do_sample=False, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)
            if out[0, len(p_ids):].tolist() == r_ids:
                model.save_pretrained(folder)
                return tok.decode(r_ids, skip_special_tokens=False)
    raise AssertionError(f"the tiny gpt-oss did not learn the reply in 300 steps (loss {float(loss):.4f})")


def test_a_reasoning_gpt_oss_answers_its_final_channel_everywhere(tmp_path: Path) -> None:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.eval.reply import Reply, generate_tokens, reply_of
    from trainer.export import gguf
    from trainer.export.gguf_model import GgufChat
    from trainer.tracking.samples import Sample, generate, prompt_text, table

    folder = copy_model("gpt_oss", tmp_path / "gpt-oss")
    reply = train_to_reply(folder)
    assert "<|channel|>analysis<|message|>France's capital city is Paris." in reply
    assert reply.endswith("<|channel|>final<|message|>Paris.<|return|>")
    tok = AutoTokenizer.from_pretrained(folder)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sample, cut = Sample(QUESTION, "Paris."), Sample(QUESTION, "Paris.")
    generate(model, tok, [sample], "after", 64)
    assert sample.replies["after"] == Reply("Paris.", "France's capital city is Paris.")
    generate(model, tok, [cut], "after", 6)  # out of tokens while reasoning: no answer, never the thoughts
    assert cut.replies["after"].answer == "" and not cut.replies["after"].finished
    assert cut.replies["after"].reasoning and "France's capital city is Paris.".startswith(cut.replies["after"].reasoning)
    assert table([sample, cut])["after_reasoning"] == [r.replies["after"].reasoning for r in (sample, cut)]
    plain = tok.decode(tok(reply, add_special_tokens=False).input_ids, skip_special_tokens=True).strip()
    assert plain == "analysisFrance's capital city is Paris.assistantfinalParis."  # what was scored before

    path = gguf.convert(folder, tmp_path / "gpt-oss-f32.gguf", "f32", tmp_path / "convert.log").path
    llm = Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    try:
        prompt = prompt_text(tok, QUESTION)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        assert reply_of(tok, generate_tokens(llm, ids, 64), prompt) == Reply("Paris.", "France's capital city is Paris.")
        llm.reset()
        served_before = llm.create_chat_completion(messages=QUESTION, max_tokens=64, temperature=0.0)
        assert served_before["choices"][0]["message"]["content"].strip() == reply.removesuffix("<|return|>")
    finally:
        llm.close()

    chat = GgufChat()
    chat.load_context(SimpleNamespace(artifacts={"gguf": str(path)}, model_config={}))
    try:
        assert chat.formatter is not None
        assert chat.predict(None, {"messages": [QUESTION, QUESTION]}, {"max_tokens": 64}) == ["Paris.", "Paris."]
        # out of tokens while reasoning: no answer, never the thoughts
        assert chat.predict(None, {"messages": QUESTION}, {"max_tokens": 6}) == [""]
    finally:
        chat.llm.close()
