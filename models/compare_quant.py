#!/usr/bin/env python3
"""Compares the q8 and f32 files of one model token by token with the arq Python
package (`pip install ./python`), and plots the per-token log-probability differences
to a PNG.

    python models/compare_quant.py                       # the committed tiny GPT
    python models/compare_quant.py --q8 smollm2-q8.arq --f32 smollm2-f32.arq \
        --text some.txt --out smollm2-q8-vs-f32.png

Both files score the same text (the same token ids: quantization leaves the tokenizer
alone) in the same windows; the difference at each position is
log p_q8(token) - log p_f32(token). The figure shows it along the text, its histogram,
and its running sum (how far apart the two log-likelihoods of the text drift).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

import arq

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--q8", type=Path, default=HERE / "tinygpt" / "tinygpt-q8.arq")
    ap.add_argument("--f32", type=Path, default=HERE / "tinygpt" / "tinygpt-f32.arq")
    ap.add_argument("--text", type=Path, default=HERE / "tinygpt" / "heldout.txt")
    ap.add_argument("--out", type=Path, default=Path("compare_quant.png"))
    ap.add_argument("--chars", type=int, default=4000, help="score the text's first CHARS characters")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()

    text = a.text.read_text()[: a.chars]
    q8 = arq.Model(a.q8, threads=a.threads).score(text, per_token=True)
    f32 = arq.Model(a.f32, threads=a.threads).score(text, per_token=True)
    pq, pf = q8["per_token"], f32["per_token"]
    if not np.array_equal(pq["id"], pf["id"]):
        raise SystemExit("the two files tokenize the text differently: not the same model")
    diff = pq["logprob"] - pf["logprob"]
    pos = pq["pos"]
    agree = np.mean(pq["top_id"] == pf["top_id"])

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), constrained_layout=True)
    fig.suptitle(f"{a.q8.name} vs {a.f32.name}: {len(diff)} tokens of {a.text.name}")
    ax1.plot(pos, diff, lw=0.6, color="tab:blue")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(xlabel="token position", ylabel="log p(q8) - log p(f32)  [nats]",
            title=f"per-token difference (mean {diff.mean():+.5f}, max |.| {np.abs(diff).max():.4f})")
    ax2.hist(diff, bins=80, color="tab:blue")
    ax2.set(xlabel="log p(q8) - log p(f32)  [nats]", ylabel="tokens", yscale="log",
            title=f"histogram; top-1 agreement {100 * agree:.2f}%")
    ax3.plot(pos, np.cumsum(diff), lw=1, color="tab:red")
    ax3.axhline(0, color="black", lw=0.5)
    ax3.set(xlabel="token position", ylabel="cumulative difference  [nats]",
            title=f"log-likelihood of the text so far, q8 minus f32 (bits/byte q8 {q8['bits_per_byte']:.5f}, "
                  f"f32 {f32['bits_per_byte']:.5f})")
    fig.savefig(a.out, dpi=72)
    print(f"{len(diff)} tokens: bits/byte q8 {q8['bits_per_byte']:.5f}, f32 {f32['bits_per_byte']:.5f}; "
          f"mean difference {diff.mean():+.6f} nats, max |difference| {np.abs(diff).max():.5f}, "
          f"top-1 agreement {100 * agree:.2f}%; wrote {a.out}")


if __name__ == "__main__":
    main()
