"""Exceptions on bad input, iterator cancellation, threads and the GIL, conversion."""

import gc
import threading
import time
import weakref

import numpy as np
import pytest

import arq
from arq import _arq
from conftest import (DIGITS_Q8, HELDOUT, PIXELCNN_ONNX, TINY_LLAMA_GGUF, TINYGPT_Q8,
                      cli, cli_json)


@pytest.fixture(scope="module")
def gpt():
    return arq.Model(TINYGPT_Q8, threads=1)


def test_the_exceptions_form_one_family():
    for e in (arq.BadFileError, arq.BadArgumentError, arq.ArenaTooSmallError):
        assert issubclass(e, arq.ArqError) and issubclass(e, Exception)


def test_bad_files_raise_bad_file_error(tmp_path):
    with pytest.raises(arq.BadFileError, match="no-such.arq"):
        arq.Model(tmp_path / "no-such.arq")
    junk = tmp_path / "junk.arq"
    junk.write_bytes(b"not an arq file\n" * 8)
    with pytest.raises(arq.BadFileError) as e:
        arq.Model(junk)
    assert "\n" not in str(e.value) and "junk.arq" in str(e.value)
    cut = tmp_path / "cut.arq"
    cut.write_bytes(TINYGPT_Q8.read_bytes()[:100_000])
    with pytest.raises(arq.BadFileError, match="cut.arq"):
        arq.Model(cut)
    with pytest.raises(arq.BadFileError):
        arq.Model(tmp_path)  # a directory


def test_bad_arguments_raise_bad_argument_error(gpt):
    with pytest.raises(arq.BadArgumentError, match="threads"):
        arq.Model(TINYGPT_Q8, threads=0)
    with pytest.raises(arq.BadArgumentError, match="longer than the model's training context"):
        gpt.score("some text", ctx=65)
    with pytest.raises(arq.BadArgumentError, match="fewer than 2 tokens"):
        gpt.score("a")
    with pytest.raises(arq.BadArgumentError, match="kv must be"):
        gpt.score("some text", kv="q4")
    with pytest.raises(arq.BadArgumentError, match="a text model scores a str"):
        gpt.score(np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(arq.BadArgumentError, match="top must be"):
        gpt.next("x", top=0)
    with pytest.raises(arq.BadArgumentError, match="top_k"):
        gpt.generate("x", top_k=0)
    with pytest.raises(arq.BadArgumentError, match="temperature"):
        gpt.generate("x", temperature=-1.0)
    with pytest.raises(arq.BadArgumentError, match="is a text model"):
        gpt.sample(4)
    with pytest.raises(arq.BadArgumentError, match="out of range"):
        gpt.detokenize([78])
    with pytest.raises(arq.BadArgumentError, match="quant must be"):
        arq.convert(TINY_LLAMA_GGUF, "x.arq", quant="q5")
    with pytest.raises(OverflowError):
        gpt.generate("x", seed=-1)
    huge = "a" * ((64 << 20) + 1)  # the CLI's cap on a text file
    with pytest.raises(arq.BadArgumentError, match="over the cap"):
        gpt.score(huge)
    with pytest.raises(arq.BadArgumentError, match="over the cap"):
        gpt.generate(huge)


def test_session_errors_leave_it_usable(gpt):
    s = gpt.session(ctx=8)
    with pytest.raises(arq.BadArgumentError, match="token id 78 out of range"):
        s.feed([78])
    with pytest.raises(arq.BadArgumentError, match="at least one"):
        s.feed([])
    s.feed([1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(arq.BadArgumentError, match="context of 8 tokens is full"):
        s.feed([1])
    s.reset()
    s.feed([1])
    assert s.pos == 1 and s.logits().shape == (78,)
    with pytest.raises(arq.BadArgumentError, match="ctx must be"):
        gpt.session(ctx=0)


def test_breaking_out_of_generation_frees_its_session(gpt):
    gc.collect()
    base = _arq._live_sessions()
    it = gpt.generate("The ", max_tokens=1000, seed=1)
    ref = weakref.ref(it)
    assert _arq._live_sessions() == base + 1
    for i, _ in enumerate(it):
        if i == 3:
            break
    del it
    assert ref() is None and _arq._live_sessions() == base
    # close() frees it at once; an exhausted iterator has freed it already.
    it = gpt.generate("The ", max_tokens=1000, seed=1)
    next(it)
    it.close()
    assert _arq._live_sessions() == base and list(it) == []
    it = gpt.generate("The ", max_tokens=5, seed=1)
    assert len("".join(it)) > 0 and it.stop == "length"
    assert _arq._live_sessions() == base
    # A session outlives the Model object that made it.
    m = arq.Model(TINYGPT_Q8, threads=1)
    s = m.session(ctx=16)
    del m
    gc.collect()
    s.feed([1, 2, 3])
    assert s.logits().shape == (78,)
    del s
    assert _arq._live_sessions() == base


def test_threads_share_a_model_and_get_the_serial_results():
    m = arq.Model(TINYGPT_Q8, threads=1)
    text = HELDOUT.read_text()[:1500]
    want_score = m.score(text)["nll_nats"]
    want_text = "".join(m.generate("The ", max_tokens=50, seed=4))
    digits = arq.Model(DIGITS_Q8, threads=1)
    want_imgs = digits.sample(4, seed=2)
    results, errors = [], []

    def work(k):
        try:
            for _ in range(3):
                results.append(("score", m.score(text)["nll_nats"]))
                results.append(("gen", "".join(m.generate("The ", max_tokens=50, seed=4))))
                results.append(("imgs", digits.sample(4, seed=2)))
                s = m.session(ctx=16)
                s.feed(m.prompt_ids("The "))
                results.append(("session", int(s.logits().argmax())))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4 * 3 * 4
    s = m.session(ctx=16)
    s.feed(m.prompt_ids("The "))
    want_argmax = int(s.logits().argmax())
    for kind, v in results:
        if kind == "score":
            assert v == want_score
        elif kind == "gen":
            assert v == want_text
        elif kind == "imgs":
            assert np.array_equal(v, want_imgs)
        else:
            assert v == want_argmax


def test_one_iterator_from_several_threads_yields_each_piece_once(gpt):
    it = gpt.generate("The ", max_tokens=200, seed=9)
    pieces = []

    def drain():
        for p in it:
            pieces.append(p)

    threads = [threading.Thread(target=drain) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Order between threads may interleave; the multiset of pieces is the serial one.
    serial = list(gpt.generate("The ", max_tokens=200, seed=9))
    assert sorted(pieces) == sorted(serial) and it.stop == "length"


def test_the_gil_is_released_while_scoring():
    m = arq.Model(TINYGPT_Q8, threads=1)
    text = HELDOUT.read_text()
    done = threading.Event()
    ticks = 0

    def score():
        m.score(text)
        done.set()

    t = threading.Thread(target=score)
    t0 = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - t0
    # Held GIL: this loop would stall for the whole score (one tick); released, it
    # ticks about once a millisecond.
    assert elapsed > 0.2 and ticks > elapsed * 1000 / 10


def test_convert_writes_what_the_cli_writes(tmp_path):
    report = arq.convert(TINY_LLAMA_GGUF, tmp_path / "py.arq", quant="q8", progress=False)
    cli("convert", TINY_LLAMA_GGUF, "-o", tmp_path / "cli.arq", "--quant", "q8")
    assert (tmp_path / "py.arq").read_bytes() == (tmp_path / "cli.arq").read_bytes()
    assert report["format"] == "gguf" and report["bytes"] == (tmp_path / "py.arq").stat().st_size
    assert report["tensor_errors"] and all(0 <= e < 0.05 for e in report["tensor_errors"].values())
    acc = report["accuracy"]
    assert acc["tokens"] > 0 and 0.9 < acc["top1_agreement"] <= 1.0 and acc["kl_mean"] >= 0
    with pytest.raises(arq.ArqError, match="exists"):
        arq.convert(TINY_LLAMA_GGUF, tmp_path / "py.arq", progress=False)
    m = arq.Model(tmp_path / "py.arq", threads=1)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    (tmp_path / "t.txt").write_text(text)
    assert m.score(text)["nll_nats"] == cli_json("score", tmp_path / "cli.arq", tmp_path / "t.txt", "--threads", "1")["nll_nats"]


def test_convert_pixelcnn_onnx(tmp_path):
    report = arq.convert(PIXELCNN_ONNX, tmp_path / "d.arq", quant="q8", progress=False)
    cli("convert", PIXELCNN_ONNX, "-o", tmp_path / "cli.arq", "--quant", "q8")
    assert (tmp_path / "d.arq").read_bytes() == (tmp_path / "cli.arq").read_bytes()
    assert report["format"] == "onnx" and report["accuracy"] is None and report["description"]
    p = arq.Model(tmp_path / "d.arq")
    assert p.kind == "pixel" and p.sample(2, seed=0).shape == (2, 8, 8)


def test_the_compare_quant_example_writes_its_png(tmp_path):
    import subprocess, sys
    from conftest import MODELS
    out = tmp_path / "cmp.png"
    r = subprocess.run([sys.executable, MODELS / "compare_quant.py", "--out", out, "--chars", "1500", "--threads", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "top-1 agreement" in r.stdout
