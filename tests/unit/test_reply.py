"""A reasoning model's answer, found in its reply as the chat template trained it (trainer/eval/reply.py).

The replies here are what a model trained by kubetune would generate: the training rendering of a conversation
after its generation prompt, tokenized by the family's real tokenizer, decoded the way samples and evaluation decode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.resources import tokenizer_for
from trainer.eval.reply import Reply, cut_short, opens_thought, reply_of, special_texts, split_reply

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def trained_reply(tok, answer: dict) -> tuple[list[int], str]:  # noqa: ANN001 - a transformers tokenizer
    """The token ids a perfectly trained model generates after the prompt, and the prompt."""
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*QUESTION, answer], tokenize=False)
    assert full.startswith(prompt), (prompt, full)
    return tok(full[len(prompt):], add_special_tokens=False).input_ids, prompt


@pytest.mark.parametrize(("family", "message"), [
    ("harmony", {"role": "assistant", "content": "Paris.", "thinking": "France's capital is Paris."}),  # gpt-oss
    ("harmony", {"role": "assistant", "content": "Paris."}),
    ("qwen2", {"role": "assistant", "content": "<think>\nFrance's capital is Paris.\n</think>\n\nParis."}),
    ("llama3", {"role": "assistant", "content": "Paris."}),
    ("gemma3", {"role": "assistant", "content": "Paris."}),
])
def test_the_answer_of_a_trained_reply_is_the_answer_without_its_reasoning(family: str, message: dict) -> None:
    tok = tokenizer_for(family)
    ids, prompt = trained_reply(tok, message)
    reply = reply_of(tok, ids, prompt)
    assert reply.answer == "Paris." and reply.finished
    assert reply.reasoning == ("France's capital is Paris." if "thinking" in message or "<think>" in message["content"]
                               else "")
    # what the answer was before: the reply decoded without its special tokens
    plain = tok.decode(ids, skip_special_tokens=True).strip()
    if family == "harmony":
        assert plain != "Paris." and plain.endswith("finalParis.")


def test_deepseek_r1_replies_after_its_generation_prompt() -> None:
    """DeepSeek-R1-Distill's template drops an answer's thoughts from the training rendering and ends its generation
    prompt with an empty thought; a prompt that opens the thought instead (the official template's newer form) makes
    the reply start inside it."""
    tok = tokenizer_for("deepseek_r1_qwen")
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("</think>") and not opens_thought(prompt)
    eos = tok.eos_token
    ids = tok("\n\nParis." + eos, add_special_tokens=False).input_ids
    assert reply_of(tok, ids, prompt).answer == "Paris."
    opened = prompt[: -len("</think>")]
    assert opens_thought(opened)
    ids = tok("France's capital.\n</think>\n\nParis." + eos, add_special_tokens=False).input_ids
    assert reply_of(tok, ids, opened).answer == "Paris."
    cut = reply_of(tok, tok("France's capital is", add_special_tokens=False).input_ids, opened)
    assert cut == Reply("", "France's capital is", finished=False)


def test_harmony_reply_parts_and_a_reply_that_never_answered() -> None:
    text = ("<|channel|>analysis<|message|>Think it over.<|end|><|start|>assistant<|channel|>final<|message|>"
            "Paris.<|return|>")
    assert split_reply(text, ["<|return|>"]) == Reply("Paris.", "Think it over.")
    # out of max_new_tokens while reasoning: no answer, and never the thoughts as the answer
    assert split_reply("<|channel|>analysis<|message|>Think it over, at length") == Reply(
        "", "Think it over, at length", finished=False)
    # a tool call's channel words (`to=...`) do not hide the channel
    text = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>"
    assert split_reply(text).finished is False


def test_think_replies() -> None:
    assert split_reply("<think>\nhmm\n</think>\n\nParis.<|im_end|>", ["<|im_end|>"]) == Reply("Paris.", "hmm")
    # the generation prompt opened the thought (DeepSeek-R1's newer templates)
    assert opens_thought("<｜Assistant｜><think>\n") and not opens_thought("<think>\n</think>\n\n")
    assert split_reply("hmm\n</think>\n\nParis.", thinking=True) == Reply("Paris.", "hmm")
    assert split_reply("hmm, still thinking", thinking=True) == Reply("", "hmm, still thinking", finished=False)
    assert split_reply("<think>hmm") == Reply("", "hmm", finished=False)
    assert split_reply("Paris.<|eot_id|>", ["<|eot_id|>"]) == Reply("Paris.")


def test_replies_cut_short_while_reasoning_are_counted_with_the_fix() -> None:
    replies = [Reply("Paris."), Reply("", "hmm", finished=False), Reply("Rome.", "it is Rome")]
    assert cut_short(replies, 64) == ("1 of 3 replies ran out of eval.max_new_tokens (64) while still reasoning and "
                                      "count as no answer: raise eval.max_new_tokens to score their answers")
    assert cut_short([Reply("Paris."), Reply("", "", finished=True)], 64) is None


def test_samples_show_the_reasoning_and_say_when_a_reply_never_answered() -> None:
    from trainer.tracking.samples import NO_ANSWER, Sample, render, table

    plain = Sample(QUESTION, "Paris.", {"before": Reply("Lyon."), "after": Reply("Paris.")})
    thought = Sample(QUESTION, "Paris.", {"before": Reply("", "hmm, France", finished=False),
                                         "after": Reply("Paris.", "France's capital is Paris.")})
    assert table([plain]) == {"prompt": [QUESTION[0]["content"]], "reference": ["Paris."], "before": ["Lyon."],
                              "after": ["Paris."]}
    assert table([plain, thought]) == {
        "prompt": [QUESTION[0]["content"]] * 2, "reference": ["Paris."] * 2, "before": ["Lyon.", ""],
        "after": ["Paris.", "Paris."], "before_reasoning": ["", "hmm, France"],
        "after_reasoning": ["", "France's capital is Paris."]}
    assert render([thought]).splitlines()[2:] == [
        "    before → after:", f"      {NO_ANSWER}", "        reasoning: hmm, France", "    → Paris.",
        "        reasoning: France's capital is Paris."]
    # checkpoints keep the reply before training, and older checkpoints the answer only
    restored = Sample(QUESTION)
    restored.restore("before", thought.saved("before"))
    restored.restore("after", "Paris.")
    assert restored.replies == {"before": thought.replies["before"], "after": Reply("Paris.")}
    assert plain.saved("none") is None


def test_special_texts_include_added_special_tokens() -> None:
    tok = tokenizer_for("harmony")
    texts = special_texts(tok)
    assert {"<|channel|>", "<|message|>", "<|return|>", "<|start|>", "<|end|>"} <= set(texts)


def test_held_out_reference_is_the_answer_without_reasoning() -> None:
    from trainer.tracking.samples import up_to_last_user

    conv = [*QUESTION, {"role": "assistant", "content": "<think>hmm</think>\n\nParis."}]
    assert up_to_last_user(conv) == (QUESTION, "Paris.")
    conv = [*QUESTION, {"role": "assistant", "content": "Paris.", "thinking": "hmm"}]
    assert up_to_last_user(conv) == (QUESTION, "Paris.")


def test_gguf_generate_tokens_answer_as_llama_cpp_completes() -> None:
    """The GGUF evaluation now generates token ids (to keep the special tokens a reasoning reply is split by): on the
    quickstart's real Gemma 3 270M it answers exactly what llama.cpp's own greedy completion answers."""
    from llama_cpp import Llama

    from launcher import datacheck
    from trainer.eval.reply import generate_tokens
    from trainer.spec.io import load_spec

    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    gguf = quickstart.parent.parent / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.exists():
        pytest.skip("run `make setup` first: the quickstart's GGUF is missing")
    tok = datacheck.load_tokenizer(load_spec(quickstart, []), quickstart.parent)
    llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False, seed=0)
    try:
        for question in ("Is the sky blue?", "Name a prime number.", "Write one word."):
            prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
            ids = llm.tokenize(prompt.encode(), add_bos=not prompt.startswith(tok.bos_token), special=True)
            new = generate_tokens(llm, ids, 24)
            assert 0 < len(new) <= 24
            llm.reset()  # the same start as generate_tokens: the whole prompt evaluated afresh
            completed = llm.create_completion(ids, max_tokens=24, temperature=0.0, top_k=1)["choices"][0]["text"]
            assert reply_of(tok, new, prompt).answer == completed.strip(), question
    finally:
        llm.close()


def test_think_markers_are_the_data_pipelines() -> None:
    """trainer/eval/reply.py travels alone with registered models, so it has its own copy of the markers."""
    from trainer.data import reasoning
    from trainer.eval import reply

    assert (reply.THINK_OPEN, reply.THINK_CLOSE) == (reasoning.THINK_OPEN, reasoning.THINK_CLOSE)


def with_chat_template(gguf: Path, tmp_path: Path, text: str) -> Path:
    """A copy of `gguf` carrying the chat template `text` (llama.cpp's gguf_new_metadata.py), as kubetune's exports
    carry the training template."""
    import os
    import subprocess
    import sys

    llama_cpp_dir = Path(os.environ.get("KUBETUNE_LLAMA_CPP_DIR", ".cache/llama.cpp")).resolve()
    template = tmp_path / "chat_template.jinja"
    template.write_text(text)
    out = tmp_path / "templated.gguf"
    done = subprocess.run([sys.executable, str(llama_cpp_dir / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"),
                           "--chat-template-file", str(template), "--force", str(gguf), str(out)],
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(llama_cpp_dir / "gguf-py")})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("template", ["gemma3", "chatml"])
def test_registered_model_answers_as_llama_cpp_chat_completion(template: str, tmp_path: Path) -> None:
    """The registered GGUF's `python_function` model generates the reply itself (to keep its special tokens): on the
    quickstart's real Gemma 3 270M with Gemma 3's chat template in the GGUF (as exports write it), its answers are
    llama-cpp-python's `create_chat_completion`'s, greedy and sampled with a seed. With a template llama-cpp-python
    knows by name (ChatML, exactly its own), they come from `create_chat_completion` itself."""
    from types import SimpleNamespace

    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE

    from trainer.export.gguf_model import PARAMS, GgufChat

    gguf = Path(__file__).resolve().parents[2] / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.exists():
        pytest.skip("run `make setup` first: the quickstart's GGUF is missing")
    text = tokenizer_for("gemma3").chat_template if template == "gemma3" else CHATML_CHAT_TEMPLATE
    gguf = with_chat_template(gguf, tmp_path, text)
    model = GgufChat()
    model.load_context(SimpleNamespace(artifacts={"gguf": str(gguf)}, model_config={}))
    assert (model.formatter is not None) is (template == "gemma3")  # the path that generates and splits replies
    llm = Llama(model_path=str(gguf), n_ctx=4096, verbose=False)
    chats = [[{"role": "user", "content": "Is the sky blue?"}], [{"role": "user", "content": "Name a prime number."}]]
    try:
        for params in ({"max_tokens": 24, "temperature": 0.0}, {"max_tokens": 24, "temperature": 0.8, "seed": 7}):
            p = PARAMS | params
            want = []
            for chat in chats:
                llm.reset()
                out = llm.create_chat_completion(messages=chat, max_tokens=p["max_tokens"], temperature=p["temperature"],
                                                 top_p=p["top_p"], top_k=p["top_k"], seed=p["seed"])
                want.append(out["choices"][0]["message"]["content"].strip())
            assert all(want)
            assert model.predict(None, {"messages": chats}, params) == want, params
    finally:
        llm.close()
        model.llm.close()
