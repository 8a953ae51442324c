#!/usr/bin/env python3
"""Where arq q8's error on SmolLM2-135M-Instruct comes from: a PyTorch simulation.

transformers' LlamaForCausalLM in f32 on the GGUF's weights (as models/reference_smollm2.py
loads it), with every nn.Linear replaced by: weights re-quantized as the converter's
quantize_weights_row_q8 does (blocks of 32, f16 scale, values rounded against the stored
scale) or left exact, and inputs quantized as the runtime's quantize_row_q8 does (blocks
of 32, d = amax/127, q = rint(x/d), dequantized with f16(d)) or variants, one class of
products at a time. Not bit-exact with arq (float summation order), but it reproduces
arq's held-out q8 and q4 numbers within 0.1-0.2 points. Each scheme's top-1 agreement,
perplexity and KL against the unmodified f32 model, on the five reference texts and the
held-out windows (models/fixtures/smollm2_heldout.json). About 3 minutes per scheme on 2
cores.

    /work/cache/venv/bin/python -u models/simulate_q8_smollm2.py [SCHEME-SUBSTRING ...]
"""
import os, sys, json, math
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_smollm2 as ref
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
gd, gn = os.path.split(ref.DEFAULT_GGUF)
model = AutoModelForCausalLM.from_pretrained(gd, gguf_file=gn, dtype=torch.float32).eval()
held = json.load(open(os.path.join(ref.REPO, "models", "fixtures", "smollm2_heldout.json")))["texts"]
refs = json.load(open(os.path.join(ref.REPO, "models", "fixtures", "smollm2_reference.json")))["texts"]
sets = {"ref5": [t["ids"] for t in refs.values()],
        "prose": [t["ids"] for k, t in held.items() if k.startswith("prose")],
        "tinygpt": [t["ids"] for k, t in held.items() if k.startswith("tinygpt")]}

def f16(x): return x.half().float()

def qw(w):  # arq weight quantizer: f16 scale, q against stored scale
    r, k = w.shape
    b = w.reshape(r, k // 32, 32)
    d = f16(b.abs().amax(-1, keepdim=True) / 127)
    id_ = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = torch.round(b * id_).clamp(-127, 127)
    return (q * d).reshape(r, k)

def qa(x, blk=32, scale16=True, levels=127, two=False, against16=False):
    sh = x.shape
    b = x.reshape(-1, sh[-1] // blk, blk)
    amax = b.abs().amax(-1, keepdim=True)
    d = amax / levels
    if against16: d = f16(d)
    id_ = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = torch.round(b * id_).clamp(-levels, levels)
    ds = f16(d) if scale16 else d
    y = q * ds
    if two:
        r = b - y
        y = y + qa(r.reshape(sh), blk, scale16, levels).reshape(b.shape)
    return y.reshape(sh)

orig = {}
for n, m in model.named_modules():
    if isinstance(m, torch.nn.Linear):
        orig[n] = m.weight.data.clone()
lm_tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
print("tied", lm_tied, file=sys.stderr)

def cls(n):
    for c in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]:
        if n.endswith(c): return c
    return n

def configure(wq, aq):
    # wq(cls)->bool quantize weights; aq(cls)-> None (f32) or dict of qa kwargs
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            c = cls(n)
            w = orig[n]
            if c == "lm_head":
                m.weight = torch.nn.Parameter(qw(w) if wq(c) else w.clone())
            else:
                m.weight.data = qw(w) if wq(c) else w.clone()
            a = aq(c)
            def fwd(x, m=m, a=a):
                if a is not None: x = qa(x, **a)
                return F.linear(x, m.weight, m.bias)
            m.forward = fwd

@torch.no_grad()
def run():
    out = {}
    for s, idss in sets.items():
        lps, tops = [], []
        for ids in idss:
            lg = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            lps.append(torch.log_softmax(lg.double(), -1)[:-1])
            tops.append(lg[:-1].argmax(-1))
        out[s] = (lps, tops)
    return out

configure(lambda c: False, lambda c: None)
base = run()
def report(name, r):
    parts = []
    for s in sets:
        lb, tb = base[s]; lq, tq = r[s]
        n = sum(len(t) for t in tb)
        agree = sum(int((a == b).sum()) for a, b in zip(tb, tq))
        kl = sum(float((lbb.exp() * (lbb - lqq)).sum()) for lbb, lqq in zip(lb, lq)) / n
        nll_b = nll_q = 0.0
        for ids, lbb, lqq in zip(sets[s], lb, lq):
            tg = torch.tensor(ids[1:])
            nll_b -= float(lbb.gather(1, tg[:, None]).sum()); nll_q -= float(lqq.gather(1, tg[:, None]).sum())
        parts.append(f"{s}: top1 {100*agree/n:.2f}% ({n}) ppl {math.exp(nll_q/n):.4f}/{math.exp(nll_b/n):.4f} ({100*(math.exp((nll_q-nll_b)/n)-1):+.3f}%) KL {kl:.5f}")
    print(f"{name:28s} | " + " | ".join(parts), flush=True)

A32 = dict(blk=32)
CFG = {
 "q8 (W q8, A q8/32)": (lambda c: True, lambda c: A32),
 "W exact, A q8/32 (~q4)": (lambda c: False, lambda c: A32),
 "W q8, A f32": (lambda c: True, lambda c: None),
 "q8 but lm_head A f32": (lambda c: True, lambda c: None if c == "lm_head" else A32),
 "q8 but down_proj A f32": (lambda c: True, lambda c: None if c == "down_proj" else A32),
 "A q8/32 q vs f16 scale": (lambda c: True, lambda c: dict(blk=32, against16=True)),
 "A q8/32 f32 scale": (lambda c: True, lambda c: dict(blk=32, scale16=False)),
 "A q8/16": (lambda c: True, lambda c: dict(blk=16)),
 "A two-level q8/32": (lambda c: True, lambda c: dict(blk=32, two=True)),
}
for cl in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]:
    CFG[f"q8 but {cl} A f32"] = (lambda c: True, lambda c, cl=cl: None if c == cl else A32)
only = sys.argv[1:]
for name, (wq, aq) in CFG.items():
    if only and not any(o in name for o in only): continue
    configure(wq, aq)
    report(name, run())
