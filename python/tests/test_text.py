"""Text models from Python against the arq CLI's --json output on the same inputs:
scores bit for bit, the same next-token probabilities, the same generated text for the
same seed; numpy shapes and dtypes; sessions step by step."""

import numpy as np
import pytest

import arq
from conftest import HELDOUT, TINYGPT_F32, TINYGPT_Q8, cli, cli_json


@pytest.fixture(scope="module")
def gpt():
    return arq.Model(TINYGPT_Q8, threads=2)


def test_model_reports_its_kind_and_config(gpt):
    assert gpt.kind == "text"
    assert gpt.threads == 2
    c = gpt.config
    assert (c["family"], c["vocab"], c["ctx_train"]) == ("gpt2", 78, 64)


def test_score_equals_the_cli_bit_for_bit(gpt):
    text = HELDOUT.read_text()
    got = gpt.score(text, per_token=True)
    want = cli_json("score", TINYGPT_Q8, HELDOUT, "--per-token", "--threads", "2")
    for key in ("tokens", "nll_nats", "perplexity", "bits_per_token", "bits_per_byte", "bytes", "bos_added"):
        assert got[key] == want[key], key
    assert got["windows"] == want["windows"]
    per = got["per_token"]
    n = want["tokens"]
    for key, dtype in (("pos", np.int64), ("id", np.uint32), ("logprob", np.float64),
                       ("top_id", np.uint32), ("top_logprob", np.float64)):
        assert per[key].dtype == dtype and per[key].shape == (n,), key
        assert per[key].tolist() == [row[key] for row in want["per_token"]], key


def test_score_in_short_windows_equals_the_cli(gpt, tmp_path):
    text = HELDOUT.read_text()[:3000]
    path = tmp_path / "text.txt"
    path.write_text(text)
    got = gpt.score(text, ctx=16, kv="q8")
    want = cli_json("score", TINYGPT_Q8, path, "--ctx", "16", "--kv", "q8", "--threads", "2")
    assert want["windows"]["ctx"] == 16 and want["windows"]["count"] > 100
    assert got["windows"] == want["windows"]
    assert got["nll_nats"] == want["nll_nats"]
    assert got["bits_per_byte"] == want["bits_per_byte"]


def test_next_equals_the_cli(gpt):
    prompt = "The teacher asked the class"
    got = gpt.next(prompt, top=5)
    want = cli_json("next", TINYGPT_Q8, "-p", prompt, "--top", "5", "--threads", "2")["top"]
    assert [(t, i, p) for t, i, p in got] == [(w["token"], w["id"], w["prob"]) for w in want]
    assert abs(sum(p for _, _, p in gpt.next(prompt, top=78)) - 1.0) < 1e-9


@pytest.mark.parametrize("opts", [
    {"seed": 7},
    {"seed": 11, "temperature": 1.2, "top_k": 5, "repeat_penalty": 1.3},
    {"seed": 3, "temperature": 0.0},
])
def test_generate_equals_the_cli_for_the_same_seed(gpt, opts):
    prompt = "The answer is "
    # More tokens than the 64-token context: the context shift runs too.
    pieces = list(gpt.generate(prompt, max_tokens=100, **opts))
    flags = ["--seed", opts["seed"], "--temp", opts.get("temperature", 0.8), "--repeat-penalty", opts.get("repeat_penalty", 1.0)]
    if "top_k" in opts:
        flags += ["--top-k", opts["top_k"]]
    want = cli("generate", TINYGPT_Q8, "-p", prompt, "-n", 100, "--threads", "2", *flags).stdout.decode()
    assert want == prompt + "".join(pieces) + "\n"
    assert all(isinstance(p, str) and p for p in pieces)


def test_generation_reports_its_end_and_ids(gpt):
    g = gpt.generate("Once ", max_tokens=20, seed=5)
    assert g.stop is None and g.ids is None and g.prompt_tokens == len(gpt.prompt_ids("Once "))
    text = "".join(g)
    assert g.stop == "length" and len(g.ids) == 20
    assert gpt.detokenize(g.ids) == text
    assert list(g) == []  # an exhausted iterator stays exhausted
    assert "".join(gpt.generate("Once ", max_tokens=20, seed=5)) == text
    assert "".join(gpt.generate("Once ", max_tokens=20, seed=6)) != text


def test_session_logits_step_by_step(gpt):
    ids = gpt.prompt_ids("The teacher asked")
    s = gpt.session(ctx=32)
    assert (s.ctx, s.vocab, s.pos) == (32, 78, 0)
    with pytest.raises(arq.BadArgumentError, match="feed tokens first"):
        s.logits()
    s.feed(ids)
    assert s.pos == len(ids)
    all_at_once = s.logits()
    assert all_at_once.dtype == np.float32 and all_at_once.shape == (78,)
    # The same distribution as `next` (its probabilities from the same logits in f64).
    lp = all_at_once.astype(np.float64) - np.log(np.exp(all_at_once.astype(np.float64)).sum())
    top = gpt.next("The teacher asked", top=5)
    assert [i for _, i, _ in top] == list(np.argsort(-all_at_once, kind="stable")[:5])
    np.testing.assert_allclose([p for _, _, p in top], np.exp(lp[[i for _, i, _ in top]]), rtol=1e-5)
    # One token at a time reaches the same logits as the batched prefill.
    s.reset()
    assert s.pos == 0
    for i in ids:
        s.feed([i])
    np.testing.assert_allclose(s.logits(), all_at_once, rtol=1e-4, atol=1e-4)
    # Truncating and feeding again rewinds exactly.
    s.truncate(len(ids) - 1)
    s.feed(ids[-1:])
    np.testing.assert_allclose(s.logits(), all_at_once, rtol=1e-4, atol=1e-4)
    # A returned array is the caller's: feeding more does not change it.
    before = all_at_once.copy()
    s.feed([1])
    assert np.array_equal(all_at_once, before)


def test_tokenize_and_detokenize_round_trip(gpt):
    text = "The teacher asked the class a question."
    ids = gpt.tokenize(text)
    assert all(isinstance(i, int) for i in ids) and len(ids) > 1
    assert gpt.detokenize(ids) == text


def test_f32_and_q8_files_agree_closely():
    text = HELDOUT.read_text()[:2000]
    q8 = arq.Model(TINYGPT_Q8, threads=1).score(text, per_token=True)
    f32 = arq.Model(TINYGPT_F32, threads=1).score(text, per_token=True)
    assert np.array_equal(q8["per_token"]["id"], f32["per_token"]["id"])
    diff = q8["per_token"]["logprob"] - f32["per_token"]["logprob"]
    assert 0 < np.abs(diff).max() < 1.0
    assert abs(q8["bits_per_byte"] - f32["bits_per_byte"]) < 0.05
