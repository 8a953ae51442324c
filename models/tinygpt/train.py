#!/usr/bin/env python3
"""tinygpt: a character-level GPT-2-style model small enough for a Cortex-M4 class part
(weights <= 512 KiB as q8 in flash, working memory <= 64 KiB of RAM at its context length),
trained on English text that SmolLM2-135M-Instruct generated through arq (make_corpus.sh).

    python models/tinygpt/train.py                 # train, export, write reference.json
    python models/tinygpt/train.py --export-only   # reload tinygpt.pt, skip training

Writes models/tinygpt/{tinygpt.pt, tinygpt.onnx, reference.json, heldout.txt}. One CPU
thread (torch.set_num_threads(1)), seed 0, training capped at --cpu-budget CPU seconds.

Data: corpus.txt is documents separated by "\\n\\n\\n" (make_corpus.sh), in prompt-major
order. The last 10% of the documents (rounded) are held out: heldout.txt is exactly the
bytes of corpus.txt from the first held-out document to the end; the training text is
everything before it (separators included). Vocabulary = the sorted set of characters in
corpus.txt; token id = index in that list.

Architecture (GPT-2 block, pre-LayerNorm):
    x = tok_emb[tokens] + pos_emb[0:T]
    for each block:  x = x + proj(attn(ln_1(x)))          multi-head causal attention
                     x = x + fc2(gelu_tanh(fc(ln_2(x))))   4x MLP
    logits = ln_f(x) @ tok_emb^T                           tied head, no bias
LayerNorm eps 1e-5 with weight and bias; every Linear has a bias; GELU is the tanh
approximation (GPT-2's "gelu_new"); attention scores scaled by 1/sqrt(head_dim), masked
with -inf above the diagonal, softmax over the last axis. Dropout (training only) on the
embedding sum, the attention probabilities and both residual branches.

Held-out bits/char are computed like `arq score`: the text is scored in windows of ctx
characters advancing by ctx/2, each position scored once, the first character is the
condition (not scored); bits/char = NLL / (scored characters * ln 2).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DOC_SEP = "\n\n\n"
LN_EPS = 1e-5
QK8 = 32  # q8 block: 32 int8 values + one f16 scale (runtime/src/quant/q8.rs)

# -------------------------------------------------------------------------------------
# data


def load_corpus(path, heldout_frac=0.1):
    raw = open(path, "rb").read()
    text = raw.decode("ascii")
    docs = text.rstrip("\n").split(DOC_SEP)
    n_held = max(1, round(len(docs) * heldout_frac))
    # start of the first held-out document in `text`
    boundary = len(DOC_SEP.join(docs[:-n_held])) + len(DOC_SEP)
    assert text[boundary:].startswith(docs[-n_held])
    vocab = sorted(set(text))
    info = dict(file=os.path.basename(path), bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                documents=len(docs), heldout_documents=n_held, train_chars=boundary,
                heldout_chars=len(text) - boundary)
    return text[:boundary], text[boundary:], vocab, info


# -------------------------------------------------------------------------------------
# network


class Attention(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.d, self.h = d, heads
        self.qkv = nn.Linear(d, 3 * d)  # rows [0,d) = q, [d,2d) = k, [2d,3d) = v
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        b, t, d = x.shape
        hd = d // self.h
        qkv = self.qkv(x)
        q = qkv[:, :, :d].reshape(b, t, self.h, hd).transpose(1, 2)  # (b, h, t, hd)
        k = qkv[:, :, d:2 * d].reshape(b, t, self.h, hd).transpose(1, 2)
        v = qkv[:, :, 2 * d:].reshape(b, t, self.h, hd).transpose(1, 2)
        att = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd))  # (b, h, t, t)
        att = att.masked_fill(mask, float("-inf"))
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = Attention(d, heads, dropout)
        self.ln_2 = nn.LayerNorm(d, eps=LN_EPS)
        self.mlp = MLP(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.ln_1(x), mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class TinyGPT(nn.Module):
    def __init__(self, vocab, d=96, layers=4, heads=4, ctx=64, dropout=0.1):
        super().__init__()
        assert d % heads == 0 and d % QK8 == 0
        self.ctx = ctx
        self.hp = dict(vocab_size=vocab, d_model=d, layers=layers, heads=heads, head_dim=d // heads,
                       mlp_hidden=4 * d, context_length=ctx, layer_norm_epsilon=LN_EPS,
                       gelu="tanh approximation", tied_head=True, train_dropout=dropout)
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(ctx, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d, eps=LN_EPS)
        # True above the diagonal = positions a query may not see
        self.register_buffer("causal_mask", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1),
                             persistent=False)
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.tok_emb(tokens) + self.pos_emb.weight[:t]
        x = self.drop(x)
        mask = self.causal_mask[:t, :t]
        for blk in self.blocks:
            x = blk(x, mask)
        return F.linear(self.ln_f(x), self.tok_emb.weight)


# -------------------------------------------------------------------------------------
# budgets: flash (weights as q8) and RAM (KV cache + per-step scratch)


def flash_budget(model):
    """q8 for every matrix (2-D parameter, rows along the reduction dimension d or 4d):
    1 byte per weight + one f16 scale (2 bytes) per 32 weights; LayerNorm weights/biases
    and Linear biases f32 (4 bytes)."""
    q8_w = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    f32_w = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    q8_bytes = q8_w + 2 * (q8_w // QK8)
    return dict(q8_weights=q8_w, f32_weights=f32_w, q8_bytes=q8_bytes, f32_bytes=4 * f32_w,
                total_bytes=q8_bytes + 4 * f32_w, limit_bytes=512 * 1024,
                formula="sum over matrices of n*(1 + 2/32) + 4 * (LayerNorm + bias values)")


def ram_budget(hp):
    """Working memory at the context length: the KV cache as int8 rows with one f16 scale
    per row (a row = one layer's K or V for one position, d values), plus the per-step
    f32 scratch named in the issue: x (d), MLP hidden (4d), attention scores (ctx),
    logits (vocab)."""
    d, L, ctx, v = hp["d_model"], hp["layers"], hp["context_length"], hp["vocab_size"]
    kv = L * ctx * 2 * (d + 2)
    scratch = 4 * (d + 4 * d + ctx + v)
    # what a straightforward step needs beyond that: LayerNorm output (d), q/k/v (3d) and
    # attention output (d) in f32, and the int8 copy of the widest activation (4d) with
    # its f16 block scales for the int8 dot products
    extra = 4 * (d + 3 * d + d) + 4 * d + 2 * (4 * d // QK8)
    return dict(kv_cache_bytes=kv, scratch_bytes=scratch, total_bytes=kv + scratch,
                extra_scratch_bytes=extra, total_with_extra_bytes=kv + scratch + extra,
                limit_bytes=64 * 1024,
                formula="KV = layers * ctx * 2 * (d + 2); scratch = 4 * (d + 4d + ctx + vocab); "
                        "extra = 4 * 5d + 4d + 2 * 4d/32")


def print_budgets(fb, rb, hp):
    d, L, ctx, v = hp["d_model"], hp["layers"], hp["context_length"], hp["vocab_size"]
    print("flash (weights as q8):")
    print(f"  q8 matrices: {fb['q8_weights']} weights * (1 + 2/32) = {fb['q8_bytes']} B")
    print(f"  f32 LayerNorm + biases: {fb['f32_weights']} * 4 = {fb['f32_bytes']} B")
    print(f"  total {fb['total_bytes']} B = {fb['total_bytes'] / 1024:.1f} KiB  (limit 512 KiB)")
    print(f"RAM at ctx {ctx}:")
    print(f"  KV cache int8 + f16 row scale: {L} layers * {ctx} * 2 * ({d} + 2) = {rb['kv_cache_bytes']} B")
    print(f"  scratch f32: 4 * ({d} + 4*{d} + {ctx} + {v}) = {rb['scratch_bytes']} B")
    print(f"  total {rb['total_bytes']} B = {rb['total_bytes'] / 1024:.1f} KiB  (limit 64 KiB); "
          f"with ln/qkv/attn-out f32 and the int8 activation copy (+{rb['extra_scratch_bytes']} B): "
          f"{rb['total_with_extra_bytes'] / 1024:.1f} KiB")


# -------------------------------------------------------------------------------------
# q8 weights (runtime/src/quant/q8.rs quantize_row_q8)


def q8_roundtrip(w):
    """Quantize a 2-D weight per 32-value block of each row, symmetric: d = amax/127 (f32),
    q = round_half_even(v * (1/d)) clamped to [-127, 127], stored scale = f16(d);
    returns q * f32(f16(d)) (what the runtime multiplies with)."""
    assert w.dim() == 2 and w.shape[1] % QK8 == 0
    b = w.detach().float().reshape(-1, QK8)
    d = b.abs().amax(1, keepdim=True) / 127.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(b * inv).clamp(-127, 127)
    return (q * d.half().float()).reshape(w.shape)


def f16_round_matrices(model):
    """Round every 2-D parameter to the nearest float16 (in place). The ONNX file stores the
    matrices as f16 (half the size); rounding first keeps ONNX == PyTorch."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())


def q8_model(model):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(q8_roundtrip(p))
    return m


# -------------------------------------------------------------------------------------
# scoring (same windows as `arq score`)


@torch.no_grad()
def score(model, ids, ctx, batch=64):
    """Returns (nll_nats, scored positions). Windows [start, start+ctx), start += ctx/2;
    a window scores targets start+i+1 that no earlier window scored."""
    model.eval()
    stride = max(ctx // 2, 1)
    windows = []
    start, next_unscored = 0, 1
    while True:
        end = min(start + ctx, len(ids))
        windows.append((start, end, next_unscored))
        next_unscored = end
        if end == len(ids):
            break
        start += stride
    nll, n = 0.0, 0
    full = [w for w in windows if w[1] - w[0] == ctx]
    rest = [w for w in windows if w[1] - w[0] != ctx]
    for group in [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]:
        x = torch.stack([ids[s:e] for s, e, _ in group])
        lp = F.log_softmax(model(x).double(), dim=-1)
        for row, (s, e, nu) in enumerate(group):
            lo = max(nu - s - 1, 0)  # logits index i predicts target s+i+1
            tgt = ids[s + lo + 1:e]
            nll -= lp[row, lo:e - s - 1].gather(1, tgt[:, None]).sum().item()
            n += len(tgt)
    assert n == len(ids) - 1
    return nll, n


def bits_per_char(model, ids, ctx):
    nll, n = score(model, ids, ctx)
    return nll / (n * math.log(2))


# -------------------------------------------------------------------------------------
# training


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min((step - args.warmup) / max(args.steps - args.warmup, 1), 1.0)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(model, train_ids, held_ids, args):
    ctx = model.ctx
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.wd),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(args.seed)
    best = (float("inf"), None, -1)
    bad, hist = 0, []
    t0, w0 = time.process_time(), time.time()
    step = 0
    stop = "steps"
    while step < args.steps:
        model.train()
        starts = torch.randint(0, len(train_ids) - ctx - 1, (args.batch,), generator=g)
        xb = torch.stack([train_ids[s:s + ctx + 1] for s in starts.tolist()])
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args)
        logits = model(xb[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        cpu = time.process_time() - t0
        if step % args.eval_every == 0 or step == args.steps:
            bpc = bits_per_char(model, held_ids, ctx)
            hist.append([step, round(loss.item() / math.log(2), 4), round(bpc, 4)])
            if bpc < best[0] - 1e-4:
                best = (bpc, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
                bad = 0
            else:
                bad += 1
            print(f"step {step:5d}  lr {lr_at(step - 1, args):.2e}  train {loss.item() / math.log(2):.3f}"
                  f"  held-out {bpc:.4f} bits/char  best {best[0]:.4f}@{best[2]}"
                  f"  cpu {cpu:6.1f}s wall {time.time() - w0:6.1f}s", flush=True)
            if bad >= args.patience:
                stop = f"no held-out gain in {args.patience} evaluations"
                break
        if cpu > args.cpu_budget:
            stop = f"CPU budget {args.cpu_budget:.0f} s"
            if best[2] != step:  # evaluate the last step before stopping
                bpc = bits_per_char(model, held_ids, ctx)
                hist.append([step, round(loss.item() / math.log(2), 4), round(bpc, 4)])
                if bpc < best[0]:
                    best = (bpc, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
            break
    model.load_state_dict(best[1])
    print(f"stopped at step {step} ({stop}); best held-out {best[0]:.4f} bits/char at step {best[2]}")
    return dict(steps_run=step, best_step=best[2], stopped_by=stop,
                cpu_seconds=round(time.process_time() - t0, 1), wall_seconds=round(time.time() - w0, 1),
                history_step_trainbits_heldoutbpc=hist)


# -------------------------------------------------------------------------------------
# ONNX


def export_onnx(model, path, metadata):
    model.eval()
    x = torch.zeros(1, model.ctx, dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=model.ctx)
    torch.onnx.export(model, (x,), path, input_names=["tokens"], output_names=["logits"],
                      opset_version=18, dynamo=True, external_data=False,  # relabeled 17 in tidy_onnx
                      dynamic_shapes={"tokens": {0: batch, 1: seq}})
    import onnx

    m = onnx.load(path)
    tidy_onnx(m, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    for key, val in metadata.items():
        p = m.metadata_props.add()
        p.key, p.value = key, val
    onnx.save(m, path)
    onnx.checker.check_model(m, full_check=True)
    return m


def tidy_onnx(m, state):
    """Post-process the torch.onnx (dynamo) export in place:
    1. Name the weights after the PyTorch parameters. The exporter folds each Linear's
       weight transpose into an anonymous initializer ("val_30", shape (in, out)) that
       feeds a MatMul; it is renamed to the Linear's parameter name
       ("blocks.0.attn.qkv.weight") after checking that it equals that parameter
       transposed. So a Linear is MatMul(x, W) + Add(bias) with W stored (in, out).
    2. Store every matrix (2-D parameter) as float16, followed by one Cast(to=FLOAT)
       whose output "<name>_f32" replaces it in its consumers. This halves the file; the
       PyTorch model's matrices were rounded to f16 before export (f16_round_matrices),
       so the conversion is exact and the graph computes what the model computes.
    3. opset 18 -> 17 (this torch only emits >= 18): relabel only after checking that
       every op in the graph has the same schema version in opsets 17 and 18.
    4. Replace the exporter's bulky per-node metadata by "source" = "train.py:LINE: code"
       and "scope" = the module path (e.g. "blocks.2.attn.qkv"), and name each node
       "<scope>/<Op>" (made unique with a suffix)."""
    import onnx
    from onnx import numpy_helper

    scope_of = {}
    for n in m.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        sc = [x.strip(" '") for x in meta.get("pkg.torch.onnx.name_scopes", "[]").strip("[]").split(",")]
        scope_of[n.name] = sc[-2] if len(sc) >= 2 else ""
    inits = {i.name: i for i in m.graph.initializer}
    rename, head_t = {}, []
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and n.input[1] not in state:
            if not scope_of[n.name] and np.array_equal(numpy_helper.to_array(inits[n.input[1]]),
                                                       state["tok_emb.weight"].T):
                # the tied head: put back Transpose(tok_emb.weight) (the exporter sometimes
                # folds it into a copy) so the graph holds the embedding once
                m.graph.initializer.remove(inits.pop(n.input[1]))
                n.input[1] = "tok_emb.weight_T"
                head_t.append(onnx.helper.make_node("Transpose", ["tok_emb.weight"], ["tok_emb.weight_T"],
                                                    name="model/Transpose", perm=[1, 0]))
                continue
            pname = scope_of[n.name] + ".weight"
            w = numpy_helper.to_array(inits[n.input[1]])
            assert pname in state and np.array_equal(w, state[pname].T), (n.name, pname)
            rename[n.input[1]] = pname
    for old, new in rename.items():
        inits[old].name = new
    casts = []
    for init in m.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            w = numpy_helper.to_array(init)
            h = w.astype(np.float16)
            assert np.array_equal(h.astype(np.float32), w), f"{init.name} is not f16-exact"
            init.CopyFrom(numpy_helper.from_array(h, init.name))
            casts.append(onnx.helper.make_node("Cast", [init.name], [init.name + "_f32"],
                                               name=init.name + "/Cast", to=onnx.TensorProto.FLOAT))
            rename[init.name] = init.name + "_f32"
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            while x in rename:  # val_30 -> blocks.0.attn.qkv.weight -> blocks.0.attn.qkv.weight_f32
                x = rename[x]
            n.input[i] = x
    del m.graph.value_info[:]  # stale types (f32 weights); the checker re-infers them
    for t in head_t:
        t.input[0] = rename.get(t.input[0], t.input[0])
    nodes = casts + list(m.graph.node)
    for t in head_t:  # just before the head MatMul
        at = next(i for i, n in enumerate(nodes) if t.output[0] in n.input)
        nodes.insert(at, t)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    import onnx.defs

    for op in {n.op_type for n in m.graph.node}:
        s17, s18 = onnx.defs.get_schema(op, 17).since_version, onnx.defs.get_schema(op, 18).since_version
        assert s17 == s18, f"{op} changed between opset 17 ({s17}) and 18 ({s18}): cannot relabel"
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version == 18:
            o.version = 17
    script = os.path.basename(__file__)
    for n in m.graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        src = ""
        lines = meta.get("pkg.torch.onnx.stack_trace", "").splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("File") and script in line and i + 1 < len(lines):
                lineno = line.split("line ")[1].split(",")[0]
                src = f"{script}:{lineno}: {lines[i + 1].strip()}"  # innermost frame in this script
        scope = scope_of.get(n.name, "")
        scope = "" if scope.startswith("_") else scope
        del n.metadata_props[:]
        n.doc_string = ""
        for key, val in (("source", src), ("scope", scope)):
            if val:
                p = n.metadata_props.add()
                p.key, p.value = key, val
    used = {}
    for n in m.graph.node:
        if n.op_type == "Cast" and n.name.endswith("/Cast"):
            continue
        scope = next((p.value for p in n.metadata_props if p.key == "scope"), "") or "model"
        base = f"{scope}/{n.op_type}"
        used[base] = used.get(base, 0) + 1
        n.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"
    for vi in list(m.graph.input) + list(m.graph.output):
        del vi.metadata_props[:]
    del m.metadata_props[:]


def onnx_check(path, model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    d = 0.0
    with torch.no_grad():
        for t in sorted({1, 2, 17, x.shape[1]}):
            ref = model(x[:, :t]).numpy()
            got = sess.run(None, {"tokens": x[:, :t].numpy()})[0]
            got1 = sess.run(None, {"tokens": x[:1, :t].numpy()})[0]
            d = max(d, float(np.abs(ref - got).max()), float(np.abs(ref[:1] - got1).max()))
    print(f"onnxruntime vs torch (batch {x.shape[0]} and 1, seq 1/2/17/{x.shape[1]}): max |diff| = {d:.3g}")
    return d


# -------------------------------------------------------------------------------------


@torch.no_grad()
def greedy(model, prompt, stoi, itos, n):
    """Temperature 0: each next character = argmax of the logits at the last position of
    the model run on the last min(len, ctx) characters of the sequence so far."""
    model.eval()
    ids = [stoi[c] for c in prompt]
    for _ in range(n):
        x = torch.tensor([ids[-model.ctx:]])
        ids.append(int(model(x)[0, -1].argmax()))
    return "".join(itos[i] for i in ids[len(prompt):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus.txt"))
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4000, help="cosine schedule length (max steps)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8, help="evaluations without held-out gain")
    ap.add_argument("--cpu-budget", type=float, default=900.0, help="CPU seconds of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true", help="reload tinygpt.pt, skip training")
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train_text, held_text, vocab, corpus_info = load_corpus(args.corpus)
    stoi = {c: i for i, c in enumerate(vocab)}
    enc = lambda s: torch.tensor([stoi[c] for c in s], dtype=torch.int64)
    train_ids, held_ids = enc(train_text), enc(held_text)
    print(f"corpus: {corpus_info['bytes']} bytes, {corpus_info['documents']} documents; train "
          f"{len(train_text)} chars, held-out {len(held_text)} chars ({corpus_info['heldout_documents']} docs)")
    print(f"vocab ({len(vocab)}): {json.dumps(''.join(vocab))}")
    with open(os.path.join(args.out_dir, "heldout.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write(held_text)

    model = TinyGPT(len(vocab), d=args.d, layers=args.layers, heads=args.heads, ctx=args.ctx,
                    dropout=args.dropout)
    nparams = sum(p.numel() for p in model.parameters())
    fb, rb = flash_budget(model), ram_budget(model.hp)
    print(f"{nparams} parameters")
    print_budgets(fb, rb, model.hp)
    if fb["total_bytes"] > fb["limit_bytes"] or rb["total_with_extra_bytes"] > rb["limit_bytes"]:
        sys.exit("over budget")

    pt_path = os.path.join(args.out_dir, "tinygpt.pt")
    ref_path = os.path.join(args.out_dir, "reference.json")
    if args.export_only:
        model.load_state_dict(torch.load(pt_path))
        stats = json.load(open(ref_path)).get("training", {}) if os.path.exists(ref_path) else {}
    else:
        stats = train(model, train_ids, held_ids, args)
        torch.save(model.state_dict(), pt_path)
    model.eval()

    bpc_unrounded = bits_per_char(model, held_ids, args.ctx)
    f16_round_matrices(model)  # every number below is for the f16-rounded matrices
    bpc = bits_per_char(model, held_ids, args.ctx)
    print(f"held-out bits/char before rounding the matrices to f16: {bpc_unrounded:.5f}, after: {bpc:.5f}")
    qmodel = q8_model(model).eval()
    bpc_q8 = bits_per_char(qmodel, held_ids, args.ctx)
    sub = train_ids[:len(held_ids) * 4]  # the first ~4x held-out size of the training text
    bpc_train = bits_per_char(model, sub, args.ctx)
    print(f"held-out bits/char: f32 {bpc:.4f}, q8 weights {bpc_q8:.4f} "
          f"({100 * (bpc_q8 / bpc - 1):+.2f}%); train (first {len(sub)} chars) {bpc_train:.4f}")

    onnx_path = os.path.join(args.out_dir, "tinygpt.onnx")
    meta = {"arq.architecture": "gpt2", "arq.vocab": json.dumps("".join(vocab)),
            "arq.context_length": str(args.ctx), "arq.layer_norm_epsilon": str(LN_EPS),
            "arq.head_count": str(args.heads)}
    m = export_onnx(model, onnx_path, meta)
    g = torch.Generator().manual_seed(1)
    xs = torch.randint(0, len(vocab), (8, args.ctx), generator=g)
    xs[0] = held_ids[:args.ctx]
    ort_diff = onnx_check(onnx_path, model, xs)
    import onnxruntime as ort

    class OrtModel:
        ctx = args.ctx
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

        def eval(self):
            return self

        def __call__(self, x):
            return torch.from_numpy(self.sess.run(None, {"tokens": x.numpy()})[0])

    bpc_ort = bits_per_char(OrtModel(), held_ids, args.ctx)
    print(f"held-out bits/char from onnxruntime: {bpc_ort:.4f}")
    ops = [n.op_type for n in m.graph.node]
    op_counts = {op: ops.count(op) for op in sorted(set(ops))}
    print(f"ONNX {onnx_path}: {os.path.getsize(onnx_path)} bytes, {len(ops)} nodes: {op_counts}")

    # logits for 2 short held-out prompts (first 3 positions, full vocab)
    held_docs = held_text.rstrip("\n").split(DOC_SEP)
    logit_refs = []
    for doc in (held_docs[0], held_docs[4]):  # two different prompts (4 seeds per prompt)
        prompt = doc[:16]
        x = enc(prompt)[None]
        with torch.no_grad():
            lf = model(x)[0, :3].double().numpy()
            lq = qmodel(x)[0, :3].double().numpy()
        logit_refs.append(dict(prompt=prompt, ids=x[0].tolist(), logits_f32=np.round(lf, 6).tolist(),
                               logits_q8_weights=np.round(lq, 6).tolist()))
    greedy_prompts = ["Once upon a time, ", "The sky is blue because", "Here is a simple recipe for"]
    continuations = [dict(prompt=p, continuation=greedy(model, p, stoi, itos=vocab, n=80))
                     for p in greedy_prompts]
    for c in continuations:
        print(f"greedy: {c['prompt']!r} -> {c['continuation']!r}")

    ref = dict(
        _conventions=dict(
            weights="the matrices (2-D parameters) are rounded to float16 after training (the ONNX "
                    "file stores them as f16); 'f32' numbers are f32 compute with those weights",
            split="corpus.txt documents are separated by \\n\\n\\n; the last 10% of documents (rounded) "
                  "are held out: heldout.txt = corpus.txt from the first held-out document to the end",
            vocab="token id = index in `vocab` (sorted characters of corpus.txt)",
            bits_per_char="scored like `arq score`: windows of ctx chars advancing by ctx/2, each position "
                          "scored once, the first char is the condition; NLL / (scored chars * ln 2)",
            q8="every 2-D weight (tok_emb, pos_emb, qkv, proj, fc, fc2) per 32-value block of each row: "
               "d = amax/127, q = round_half_even(v/d) in [-127,127], scale f16(d); LayerNorm and "
               "biases f32; activations f32 (runtime/src/quant/q8.rs quantize_row_q8)",
            logits="model(prompt ids)[0, :3], the full logits (vocab) at the first 3 positions, "
                   "rounded to 6 decimals; logits_q8_weights from the q8-roundtripped weights",
            greedy="temperature 0: next char = argmax of the logits at the last position of the model "
                   "run on the last min(len, ctx) characters; 80 chars"),
        onnx=os.path.basename(onnx_path), onnx_bytes=os.path.getsize(onnx_path),
        onnx_sha256=hashlib.sha256(open(onnx_path, "rb").read()).hexdigest(),
        onnx_metadata=meta, onnx_opset=17, onnx_nodes=len(ops), onnx_op_counts=op_counts,
        onnxruntime_max_abs_diff=ort_diff,
        architecture=dict(type="GPT-2 (pre-LayerNorm, learned positions, tied head)", **model.hp),
        vocab="".join(vocab),
        corpus=corpus_info,
        parameters=nparams,
        parameter_counts={k: v.numel() for k, v in model.named_parameters()},
        budget=dict(flash=fb, ram=rb),
        heldout_bits_per_char=dict(f32=round(bpc, 5), f32_before_f16_rounding=round(bpc_unrounded, 5), q8_weights=round(bpc_q8, 5),
                                   q8_relative_change=round(bpc_q8 / bpc - 1, 5),
                                   onnxruntime_f32=round(bpc_ort, 5),
                                   train_first_chars=dict(chars=len(sub), f32=round(bpc_train, 5))),
        training=dict(stats, optimizer=f"AdamW lr {args.lr} betas (0.9, 0.95) wd {args.wd} on matrices, "
                      f"batch {args.batch} x ctx {args.ctx} random windows, warmup {args.warmup}, cosine to "
                      f"lr/10 at step {args.steps}, grad clip 1.0, eval every {args.eval_every} steps, stop "
                      f"after {args.patience} evals without gain or {args.cpu_budget:.0f} CPU s, "
                      "checkpoint = best held-out bits/char", dropout=args.dropout, seed=args.seed,
                      threads=1, torch=torch.__version__),
        logits=logit_refs,
        greedy=continuations,
    )
    with open(ref_path, "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {ref_path}")


if __name__ == "__main__":
    main()
