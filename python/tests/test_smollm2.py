"""SmolLM2-135M-Instruct (fetched by models/fetch_smollm2.sh) through the package, as the
issue's synopsis runs it, against the CLI on the same converted file."""

import numpy as np
import pytest

import arq
from conftest import HELDOUT, cli, cli_json


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-q8.arq"
    report = arq.convert(smollm2_gguf, out, quant="q8", progress=False)
    assert report["format"] == "gguf" and report["accuracy"]["top1_agreement"] > 0.9
    return out, arq.Model(out, threads=2)


def test_next_equals_the_cli(smollm2):
    path, m = smollm2
    got = m.next("The capital of France is", top=5)
    want = cli_json("next", path, "-p", "The capital of France is", "--top", "5", "--threads", "2")["top"]
    assert got == [(w["token"], w["id"], w["prob"]) for w in want]
    assert got[0][0] == " Paris"


def test_chat_generation_equals_the_cli(smollm2):
    path, m = smollm2
    prompt = "Name a colour."
    text = "".join(m.generate(prompt, max_tokens=24, seed=7, chat=True))
    want = cli("generate", path, "-p", prompt, "-n", 24, "--seed", 7, "--chat", "--threads", "2").stdout.decode()
    assert want == text + "\n" and text.strip()


def test_score_and_session_agree_with_the_cli(smollm2, tmp_path):
    path, m = smollm2
    text = HELDOUT.read_text()[:1200]
    (tmp_path / "t.txt").write_text(text)
    got = m.score(text, per_token=True, ctx=128)
    want = cli_json("score", path, tmp_path / "t.txt", "--ctx", 128, "--per-token", "--threads", "2")
    assert got["nll_nats"] == want["nll_nats"] and got["windows"] == want["windows"]
    assert got["per_token"]["logprob"].tolist() == [r["logprob"] for r in want["per_token"]]
    s = m.session(ctx=512)
    ids = m.prompt_ids("The capital of France is")
    s.feed(ids)
    logits = s.logits()
    assert logits.dtype == np.float32 and logits.shape == (m.config["vocab"],)
    assert int(logits.argmax()) == m.next("The capital of France is", top=1)[0][1]
