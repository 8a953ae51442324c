#!/usr/bin/env python3
"""Gated PixelCNN on scikit-learn's 8x8 digits: train, check causality, export to ONNX,
write reference numbers.

    python models/pixelcnn/train.py --model digits17       # 17-way categorical head
    python models/pixelcnn/train.py --model digits-binary  # Bernoulli head (x > 7)
    python models/pixelcnn/train.py --model digits-dlm     # discretized logistic mixture

Each run writes models/pixelcnn/<model>.onnx and <model>.pt and updates that model's entry
in models/pixelcnn/reference.json (and writes digits_test.npy). `--export-only` reloads
<model>.pt instead of training. Runs on one CPU thread (torch.set_num_threads(1)).

Data: sklearn.datasets.load_digits() images, shape (1797, 8, 8), integer values 0..16.
Split in file order: [0, 1000) train, [1000, 1350) validation, [1350, 1797) test.

Network input: one float32 tensor of shape (N, 1, 8, 8), the image scaled to [-1, 1]:
    digits17, digits-dlm:  x_in = x / 16 * 2 - 1        (x in 0..16)
    digits-binary:         b = (x > 7) in {0, 1};  x_in = b * 2 - 1
Pixels are ordered in raster order (row by row, left to right); the output at pixel
(r, c) is the conditional p(x[r, c] | pixels before (r, c)), i.e. it depends only on the
input at pixels (r', c') with r' < r, or r' == r and c' < c.

Architecture (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): a vertical stack v and a horizontal stack h, no blind spot.
Masking is done by SHAPES and PADDING, never by masked weights, so the ONNX graph is
plain Pad / Conv / Slice / Tanh / Sigmoid / Mul / Add:

  * vertical conv, kernel (k//2+1) x k, dilation d, on the input zero-padded by
    d*(k//2) on top, left and right (none at the bottom): output row r sees input rows
    r - d*(k//2) .. r (its own row and above).  v[r] therefore sees image rows <= r.
  * horizontal conv, kernel 1 x (k//2+1), dilation d, on the input zero-padded by
    d*(k//2) on the left: output (r, c) sees input (r, c - d*(k//2) .. c).
  * the v -> h link: a 1x1 conv on the vertical pre-activation, shifted DOWN by one row
    (Slice off the last row, Pad one zero row on top), so h at row r only receives
    v from row r-1, which has seen image rows <= r-1.
  * layer 0 (mask "A"): the horizontal conv has kernel 1 x k//2 and runs on the input
    with its last column sliced off and k//2 zero columns padded on the left, so
    h[r, c] sees x[r, c-k//2 .. c-1] but not x[r, c].  Its vertical conv is the normal
    one (v may see its own row; the down-shifted link keeps h causal).
  * gated activation: y = tanh(a[:, :C]) * sigmoid(a[:, C:]) for a with 2C channels
    (two Slices along channels).
  * layers 1..L-1 (mask "B"): v' = gate(vconv(v)),
    h' = h + conv1x1(gate(hconv(h) + downshift(conv1x1(vconv(v))))).
  * output: out = conv1x1(gate(conv1x1(h))) with the head's channel count.

Heads (output of the ONNX graph, named "out"):
  digits17       (N, 17, 8, 8) logits; p(x = k) = softmax over dim 1.
  digits-binary  (N, 1, 8, 8) logit l; p(b = 1) = sigmoid(l).
  digits-dlm     (N, 3K, 8, 8): channels [0, K) mixture logits, [K, 2K) means mu,
                 [2K, 3K) log-scales (clamped to >= -7 by the head, as in PixelCNN++),
                 over y = x / 16 * 2 - 1; bin half-width 1/16; edge bins take the tails:
                   P(y) = sum_k pi_k * [ F_k(y + 1/16) - F_k(y - 1/16) ],
                   F_k(t) = sigmoid((t - mu_k) * exp(-log_s_k)),
                   F_k(-1 - 1/16) := 0 and F_k(1 + 1/16) := 1.
                 (log_prob_dlm below computes this stably; see README.)
"""
import argparse
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
H = W = 8
LEVELS = 17  # 0..16
DLM_HALF_BIN = 1.0 / 16.0  # half of the bin width 2/16 on [-1, 1]
DLM_MIN_LOG_SCALE = -7.0

# -------------------------------------------------------------------------------------
# data


def load_splits():
    from sklearn.datasets import load_digits

    imgs = load_digits().images.astype(np.uint8)  # (1797, 8, 8), 0..16
    assert imgs.shape == (1797, 8, 8) and imgs.max() == 16
    return imgs[:1000], imgs[1000:1350], imgs[1350:]


def to_input(imgs_u8, binary):
    """uint8 (N, 8, 8) in 0..16 -> (network input float32 (N,1,8,8), target)."""
    x = torch.from_numpy(imgs_u8.astype(np.int64)).unsqueeze(1)  # (N,1,8,8) 0..16
    if binary:
        b = (x > 7).float()
        return b * 2 - 1, b
    return x.float() / 16 * 2 - 1, x


# -------------------------------------------------------------------------------------
# network


def gate(a, c):
    """tanh(a[:, :c]) * sigmoid(a[:, c:])  ->  ONNX: Slice, Tanh, Slice, Sigmoid, Mul."""
    return torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])


def down_shift(t):
    """t shifted down one row, zero top row  ->  ONNX: Slice (rows 0..H-1), Pad (top 1)."""
    return F.pad(t[:, :, : t.shape[2] - 1, :], (0, 0, 1, 0))


class GatedLayer(nn.Module):
    """One gated layer. first=True is the mask-"A" input layer (no residual, h sees
    strictly-left pixels); otherwise mask "B" with a residual on the horizontal stack."""

    def __init__(self, cin, c, k, dilation, first, dropout=0.0):
        super().__init__()
        # training-only regularizer on the residual branch; identity in eval / ONNX
        self.drop = nn.Dropout(dropout)
        self.c, self.k, self.d, self.first = c, k, dilation, first
        kh = k // 2 + 1
        # vertical stack conv: (k//2+1) x k
        self.vconv = nn.Conv2d(cin, 2 * c, (kh, k), dilation=dilation)
        # horizontal stack conv: 1 x (k//2+1)   (layer 0: 1 x k//2 on the right-shifted input)
        self.hconv = nn.Conv2d(cin, 2 * c, (1, k // 2 if first else kh), dilation=dilation)
        # vertical -> horizontal link (1x1 on the 2c-channel vertical pre-activation)
        self.v2h = nn.Conv2d(2 * c, 2 * c, 1)
        # horizontal output 1x1 (residual branch); layer 0 has none
        self.hout = None if first else nn.Conv2d(c, c, 1)

    def forward(self, v, h):
        p = self.d * (self.k // 2)
        # ONNX: Conv vconv with pads [top p, left p, bottom 0, right p] (F.pad folded in)
        v_pre = self.vconv(F.pad(v, (p, p, p, 0)))
        # ONNX: Slice Tanh Slice Sigmoid Mul -> new vertical stack (dropped in the last layer)
        v_new = gate(v_pre, self.c)
        if self.first:
            # ONNX: Slice (drop last column) -> Conv hconv (1 x k//2, pads left k//2):
            # output (r, c) sees x[r, c-k//2 .. c-1].
            h_pre = self.hconv(F.pad(h[:, :, :, : h.shape[3] - 1], (self.k // 2, 0, 0, 0)))
        else:
            # ONNX: Conv hconv (1 x (k//2+1), pads [0, p, 0, 0])
            h_pre = self.hconv(F.pad(h, (p, 0, 0, 0)))
        # ONNX: Conv v2h -> Slice, Pad (down_shift) -> Add
        h_pre = h_pre + down_shift(self.v2h(v_pre))
        # ONNX: Slice Tanh Slice Sigmoid Mul
        g = gate(h_pre, self.c)
        if self.first:
            return v_new, g
        # ONNX: Conv hout -> Add (residual)
        return v_new, h + self.hout(self.drop(g))


class GatedPixelCNN(nn.Module):
    def __init__(self, out_channels, channels=32, layers=7, k0=7, k=3,
                 dilations=(1, 2, 1, 2, 1, 2), out_hidden=64, dropout=0.0):
        super().__init__()
        assert len(dilations) == layers - 1
        self.hp = dict(channels=channels, gated_layers=layers, first_kernel=k0, kernel=k,
                       dilations=[1] + list(dilations), out_hidden=out_hidden,
                       out_channels=out_channels, train_dropout=dropout)
        self.layers = nn.ModuleList(
            [GatedLayer(1, channels, k0, 1, first=True)]
            + [GatedLayer(channels, channels, k, d, first=False, dropout=dropout)
               for d in dilations])
        self.out_hidden = out_hidden
        self.out1 = nn.Conv2d(channels, 2 * out_hidden, 1)
        self.out2 = nn.Conv2d(out_hidden, out_channels, 1)

    def forward(self, x):
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        # output: Conv out1 -> gate (Slice, Tanh, Slice, Sigmoid, Mul) -> Conv out2
        return self.out2(gate(self.out1(h), self.out_hidden))


# -------------------------------------------------------------------------------------
# heads: log p(x) per image (nats), summed over the 64 pixels


def log_prob_categorical(out, target):
    """out (N,17,8,8) logits, target (N,1,8,8) int 0..16."""
    lp = F.log_softmax(out, dim=1).gather(1, target)
    return lp.flatten(1).sum(1)


def log_prob_bernoulli(out, target):
    """out (N,1,8,8) logits, target (N,1,8,8) float {0,1}.  log sigmoid(+-l)."""
    lp = -F.softplus(-out) * target - F.softplus(out) * (1 - target)
    return lp.flatten(1).sum(1)


def log_prob_dlm(out, target):
    """out (N,3K,8,8): logits, means, log-scales; target (N,1,8,8) int 0..16.

    y = target/16*2-1, a = (y - mu + 1/16) * inv_s, b = (y - mu - 1/16) * inv_s.
      level 0:   log F(a)        = -softplus(-a)
      level 16:  log(1 - F(b))   = -softplus(b)
      otherwise: log(F(a) - F(b)) = a + log(-expm1(b - a)) - softplus(a) - softplus(b)
    (exact: sigmoid(a)-sigmoid(b) = (e^a - e^b) / ((1+e^a)(1+e^b)); b - a = -inv_s/8 < 0).
    log p = logsumexp_k(log_softmax(logits)_k + log p_k).
    """
    k = out.shape[1] // 3
    logits, mu = out[:, :k], out[:, k:2 * k]
    log_s = out[:, 2 * k:].clamp(min=DLM_MIN_LOG_SCALE)
    y = target.float() / 16 * 2 - 1  # (N,1,8,8) broadcasts over K
    inv_s = torch.exp(-log_s)
    a = (y - mu + DLM_HALF_BIN) * inv_s
    b = (y - mu - DLM_HALF_BIN) * inv_s
    mid = a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)
    lo = -F.softplus(-a)
    hi = -F.softplus(b)
    lp_k = torch.where(target == 0, lo, torch.where(target == LEVELS - 1, hi, mid))
    lp = torch.logsumexp(F.log_softmax(logits, dim=1) + lp_k, dim=1)
    return lp.flatten(1).sum(1)


MODELS = {
    "digits17": dict(binary=False, out_channels=LEVELS, log_prob=log_prob_categorical,
                     head=dict(type="categorical", classes=LEVELS,
                               output="logits (N, 17, 8, 8); p(x=k) = softmax over dim 1")),
    "digits-binary": dict(binary=True, out_channels=1, log_prob=log_prob_bernoulli,
                          head=dict(type="bernoulli",
                                    output="logit (N, 1, 8, 8); p(b=1) = sigmoid(logit)")),
    "digits-dlm": dict(binary=False, out_channels=15, log_prob=log_prob_dlm,
                       head=dict(type="discretized_logistic_mixture", components=5,
                                 levels=LEVELS, value_range=[-1.0, 1.0],
                                 value_of_level="y = x / 16 * 2 - 1",
                                 bin_half_width=DLM_HALF_BIN,
                                 min_log_scale=DLM_MIN_LOG_SCALE,
                                 edge_bins="level 0 takes (-inf, -1+1/16], level 16 takes [1-1/16, inf)",
                                 output="(N, 15, 8, 8): channels 0..4 mixture logits, 5..9 means, "
                                        "10..14 log-scales (clamp to >= -7 before use)")),
}


# -------------------------------------------------------------------------------------
# causality check


def check_causality(model, binary, seed=0, label=""):
    """For each pixel i (raster order): (a) perturbing every pixel j >= i leaves the output
    at i unchanged (max abs change reported, must be 0 up to float noise); (b) d out_i /
    d x_j is exactly zero for j >= i and nonzero for every j < i (no blind spot).
    Runs in float64 on a copy of the model."""
    import copy

    m = copy.deepcopy(model).double().eval()
    g = torch.Generator().manual_seed(seed)
    n = 4
    if binary:
        x = (torch.rand(n, 1, H, W, generator=g, dtype=torch.float64) > 0.5).double() * 2 - 1
    else:
        x = torch.randint(0, LEVELS, (n, 1, H, W), generator=g).double() / 16 * 2 - 1
    with torch.no_grad():
        base = m(x)
    worst_change = 0.0
    blind = []  # (i, j) with j < i and zero gradient
    leak_grad = 0.0
    for i in range(H * W):
        r, c = divmod(i, W)
        # (a) perturb all j >= i
        xp = x.clone().view(n, H * W)
        noise = torch.rand(n, H * W - i, generator=g, dtype=torch.float64) * 2 - 1
        xp[:, i:] = noise
        with torch.no_grad():
            o = m(xp.view(n, 1, H, W))
        worst_change = max(worst_change, (o[:, :, r, c] - base[:, :, r, c]).abs().max().item())
        # (b) gradient pattern
        xg = x.clone().requires_grad_(True)
        o = m(xg)
        (grad,) = torch.autograd.grad(o[:, :, r, c].sum() + 0.37 * o[:, :, r, c].pow(2).sum(), xg)
        gabs = grad.abs().sum(0).view(H * W)
        leak_grad = max(leak_grad, gabs[i:].max().item() if i < H * W else 0.0)
        for j in range(i):
            if gabs[j].item() == 0.0:
                blind.append((i, j))
    ok = worst_change < 1e-9 and leak_grad == 0.0 and not blind
    print(f"causality[{label}]: max |change| at i when x[j>=i] perturbed = {worst_change:.3g}; "
          f"max |d out_i / d x_j>=i| = {leak_grad:.3g}; blind-spot pairs (j<i, zero grad) = "
          f"{len(blind)} -> {'OK' if ok else 'FAIL'}")
    return dict(ok=ok, max_abs_change_future_perturbed=worst_change,
                max_abs_grad_future=leak_grad, blind_spot_pairs=len(blind))


# -------------------------------------------------------------------------------------
# train / eval


@torch.no_grad()
def nll_nats(model, log_prob, x, t, bs=500):
    model.eval()
    tot = 0.0
    for s in range(0, x.shape[0], bs):
        tot += -log_prob(model(x[s:s + bs]), t[s:s + bs]).sum().item()
    return tot / x.shape[0]


def train(model, cfg, data, args):
    (xtr, ttr), (xva, tva) = data
    log_prob = cfg["log_prob"]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    best = (float("inf"), None, -1)
    t0 = time.process_time()
    w0 = time.time()
    epoch = 0
    bad = 0
    hist = []
    while epoch < args.max_epochs:
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=g)
        for s in range(0, xtr.shape[0], args.batch):
            idx = perm[s:s + args.batch]
            loss = -log_prob(model(xtr[idx]), ttr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        va = nll_nats(model, log_prob, xva, tva)
        hist.append(va)
        if va < best[0] - 1e-3:
            best = (va, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch)
            bad = 0
        else:
            bad += 1
        if bad == args.lr_patience and opt.param_groups[0]["lr"] > args.lr / 30:
            for pg in opt.param_groups:
                pg["lr"] *= 0.3
            model.load_state_dict(best[1])  # restart from best at lower lr
            bad = 0
            print(f"  lr -> {opt.param_groups[0]['lr']:.2e} (back to epoch {best[2]})")
        cpu = time.process_time() - t0
        if epoch % 5 == 0 or epoch == 1:
            print(f"epoch {epoch:4d}  val {va:8.3f} nats/img  best {best[0]:8.3f}@{best[2]}  "
                  f"cpu {cpu:6.1f}s wall {time.time() - w0:6.1f}s", flush=True)
        if bad >= args.patience or cpu > args.cpu_budget:
            break
    model.load_state_dict(best[1])
    return dict(epochs_run=epoch, best_epoch=best[2], cpu_seconds=round(time.process_time() - t0, 1),
                wall_seconds=round(time.time() - w0, 1), val_history=[round(v, 3) for v in hist])


def arq_metadata(head):
    """Model-level ONNX metadata that tells `arq convert` the head (the graph alone cannot:
    15 output channels may be a 15-way categorical or a 5-component logistic mixture)."""
    if head["type"] == "categorical":
        return {"arq.head": "categorical", "arq.levels": str(head["classes"])}
    if head["type"] == "bernoulli":
        return {"arq.head": "bernoulli", "arq.levels": "2"}
    return {"arq.head": "logistic_mixture", "arq.levels": str(head["levels"]),
            "arq.mixtures": str(head["components"]), "arq.min_log_scale": str(head["min_log_scale"])}


def export_onnx(model, path, metadata):
    model.eval()
    x = torch.zeros(1, 1, H, W)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["out"],
                      opset_version=18, dynamo=True, external_data=False,  # relabeled 17 in tidy_onnx
                      dynamic_shapes={"x": {0: batch}})
    import onnx

    m = onnx.load(path)
    tidy_onnx(m)
    for key, val in metadata.items():
        p = m.metadata_props.add()
        p.key, p.value = key, val
    onnx.save(m, path)
    onnx.checker.check_model(m, full_check=True)
    return m


# ops (opset 17 versions) the graph may contain; anything else is an export surprise
ALLOWED_OPS = {"Conv", "Pad", "Slice", "Add", "Mul", "Tanh", "Sigmoid", "Concat"}


def tidy_onnx(m):
    """Post-process the torch.onnx (dynamo) export in place:
    1. opset 18 -> 17.  This torch only emits opset >= 18 and the ONNX version converter
       has no Pad 18->17 adapter; but every op used here has the same schema in 17 and 18
       except Pad, whose opset-18 form only adds an optional 4th input `axes`.  We check
       that no Pad uses it and then relabel the model as opset 17.
    2. Replace the exporter's bulky per-node metadata (absolute paths, fx dumps) by two
       keys: "source" = "train.py:LINE: code" of the script line that produced the node,
       and "scope" = the module path (e.g. "layers.3.v2h").
    """
    import onnx
    import onnx.defs

    ops = {n.op_type for n in m.graph.node}
    assert ops <= ALLOWED_OPS, f"unexpected ops {ops - ALLOWED_OPS}"
    for op in ops:
        if op != "Pad":
            assert onnx.defs.get_schema(op, 18).since_version == onnx.defs.get_schema(op, 17).since_version
    for n in m.graph.node:
        if n.op_type == "Pad":
            assert len(n.input) <= 3 or n.input[3] == "", "Pad uses `axes` (opset 18 only)"
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
        scopes = meta.get("pkg.torch.onnx.name_scopes", "[]")
        scope = [s.strip(" '") for s in scopes.strip("[]").split(",")]
        scope = scope[-2] if len(scope) >= 2 else ""
        del n.metadata_props[:]
        n.doc_string = ""
        for key, val in (("source", src), ("scope", scope)):
            if val:
                p = n.metadata_props.add()
                p.key, p.value = key, val
    for vi in list(m.graph.input) + list(m.graph.output):
        del vi.metadata_props[:]
    del m.metadata_props[:]


def onnx_check(path, model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    got_b = sess.run(None, {"x": x.numpy()})[0]
    got_1 = np.concatenate([sess.run(None, {"x": x[i:i + 1].numpy()})[0] for i in range(x.shape[0])])
    d = max(float(np.abs(ref - got_b).max()), float(np.abs(ref - got_1).max()))
    print(f"onnxruntime vs torch on {x.shape[0]} test images: max |diff| = {d:.3g}")
    return d


def op_list(m):
    return [n.op_type for n in m.graph.node]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--lr-patience", type=int, default=10)
    ap.add_argument("--cpu-budget", type=float, default=570.0, help="CPU seconds of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true", help="reload <model>.pt, skip training")
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = MODELS[args.model]
    tr, va, te = load_splits()
    xtr, ttr = to_input(tr, cfg["binary"])
    xva, tva = to_input(va, cfg["binary"])
    xte, tte = to_input(te, cfg["binary"])

    model = GatedPixelCNN(cfg["out_channels"], channels=args.channels, dropout=args.dropout)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {nparams} parameters")
    causal_init = check_causality(model, cfg["binary"], label="random init")

    pt_path = os.path.join(args.out_dir, f"{args.model}.pt")
    ref_path = os.path.join(args.out_dir, "reference.json")
    if args.export_only:
        model.load_state_dict(torch.load(pt_path))
        old = json.load(open(ref_path)).get(args.model, {}) if os.path.exists(ref_path) else {}
        stats = old.get("training", {})
    else:
        stats = train(model, cfg, ((xtr, ttr), (xva, tva)), args)
        torch.save(model.state_dict(), pt_path)
    model.eval()
    causal_trained = check_causality(model, cfg["binary"], label="trained")

    lp = cfg["log_prob"]
    val_nats = nll_nats(model, lp, xva, tva)
    test_nats = nll_nats(model, lp, xte, tte)
    train_nats = nll_nats(model, lp, xtr, ttr)
    bpd = lambda n: n / (H * W * math.log(2))
    print(f"{args.model}: train {train_nats:.3f}  val {val_nats:.3f}  test {test_nats:.3f} nats/image"
          f"  (test {bpd(test_nats):.4f} bits/dim)")

    onnx_path = os.path.join(args.out_dir, f"{args.model}.onnx")
    m = export_onnx(model, onnx_path, arq_metadata(cfg["head"]))
    ort_diff = onnx_check(onnx_path, model, xte[:64])
    # test NLL again from onnxruntime's outputs (same head code, f32), as a cross-check
    import hashlib
    import onnxruntime as ort

    ort_out = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
        None, {"x": xte.numpy()})[0]
    with torch.no_grad():
        test_nats_ort = -lp(torch.from_numpy(ort_out), tte).mean().item()
    print(f"test NLL from onnxruntime outputs: {test_nats_ort:.4f} nats/image")
    onnx_sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    extra = {}
    if args.model == "digits-dlm":
        k = cfg["out_channels"] // 3
        extra["test_min_raw_log_scale"] = round(float(ort_out[:, 2 * k:].min()), 4)
    ops = op_list(m)
    print(f"ONNX {onnx_path}: {os.path.getsize(onnx_path)} bytes, {len(ops)} nodes")

    np.save(os.path.join(args.out_dir, "digits_test.npy"), te)
    idx = [0, 1, 2]
    with torch.no_grad():
        outs = model(xte[idx]).numpy().astype(np.float64)
        per_img = (-lp(model(xte[idx]), tte[idx])).tolist()
    samples = []
    for n, i in enumerate(idx):
        samples.append(dict(test_index=i, image=te[i].tolist(),
                            input=np.round(xte[i, 0].numpy().astype(np.float64), 6).tolist(),
                            nll_nats=round(per_img[n], 6),
                            output=np.round(outs[n], 6).tolist()))

    ref = json.load(open(ref_path)) if os.path.exists(ref_path) else {}
    ref["_conventions"] = dict(
        data="sklearn.datasets.load_digits().images (1797, 8, 8) uint8 0..16; train [0,1000), "
             "validation [1000,1350), test [1350,1797); digits_test.npy = the test split",
        order="raster: pixel i = (i // 8, i % 8); output[:, :, r, c] parameterizes p(x[r,c] | earlier pixels)",
        nll="nats per image = -sum over the 64 pixels of log p, averaged over images; "
            "bits/dim = nats / (64 ln 2); computed by PyTorch in float32",
        samples="test images 0, 1, 2 of the test split (rows 1350, 1351, 1352); 'output' is the full "
                "network output (C, 8, 8) for that image, rounded to 6 decimals",
    )
    ref[args.model] = dict(
        onnx=os.path.basename(onnx_path),
        onnx_bytes=os.path.getsize(onnx_path),
        onnx_sha256=onnx_sha,
        parameters=nparams,
        architecture=dict(type="gated PixelCNN (vertical + horizontal stacks, no blind spot)",
                          **model.hp),
        head=cfg["head"],
        input=dict(name="x", shape=["N", 1, 8, 8], dtype="float32",
                   normalization="b = (x > 7); x_in = b * 2 - 1" if cfg["binary"]
                   else "x_in = x / 16 * 2 - 1"),
        output=dict(name="out", shape=["N", cfg["out_channels"], 8, 8]),
        nll=dict(test_nats_per_image=round(test_nats, 4), test_bits_per_dim=round(bpd(test_nats), 5),
                 val_nats_per_image=round(val_nats, 4), val_bits_per_dim=round(bpd(val_nats), 5),
                 train_nats_per_image=round(train_nats, 4),
                 test_nats_per_image_from_onnxruntime=round(test_nats_ort, 4), **extra),
        training=dict(stats, optimizer=f"Adam lr {args.lr}, batch {args.batch}, lr x0.3 after "
                      f"{args.lr_patience} epochs without val gain, early stop after {args.patience}, "
                      "checkpoint = best validation NLL", seed=args.seed, threads=1,
                      torch=torch.__version__),
        causality=dict(random_init=causal_init, trained=causal_trained),
        onnxruntime_max_abs_diff=ort_diff,
        onnx_ops=ops,
        samples=samples,
    )
    with open(ref_path, "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {ref_path}")
    if not (causal_init["ok"] and causal_trained["ok"]):
        sys.exit("causality check FAILED")


if __name__ == "__main__":
    main()
