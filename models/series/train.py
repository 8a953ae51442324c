#!/usr/bin/env python3
"""An autoregressive model of a real-valued series with a mixture-of-Gaussians head: a
small LSTM over the yearly sunspot numbers that statsmodels ships
(`statsmodels.datasets.sunspots`, 1700-2008, 309 values), exported to ONNX for
`arq convert`, with PyTorch's log densities as the reference of arq's tests.

    python models/series/train.py            # train, export, write reference.json
    python models/series/train.py --export-only

Writes models/series/sunspots.onnx, sunspots-train.csv (1700-1958) and
sunspots-test.csv (1959-2008, YEAR,SUNACTIVITY with a header) and reference.json; the
checkpoint goes to $ARQ_CACHE/series (default ~/.cache/arq/series).

Model: the series is normalised, z = (x - mean) / std with the training years' mean and
std (stored in the ONNX metadata as arq.norm_mean / arq.norm_std, which arq keeps in the
.arq file). Step i reads z_{i-1} (0 before the first value) through an LSTM(1 -> 32)
and a Linear(32 -> 3K), K = 3: K mixture logits, K means, K log standard deviations of
z_i. The density of the value itself is p(x_i | x_<i) = p(z_i | z_<i) / std. Trained
with Adam on the whole training series as one sequence (teacher forcing).

Reference: the log density (nats) of every value of the test CSV, scored from the zero
state as one sequence, f64 sums; and the first step's mixture parameters.
"""
import argparse
import csv
import json
import math
import os

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("ARQ_CACHE", os.path.expanduser("~/.cache/arq")) + "/series"
K, HIDDEN, SPLIT_YEAR = 3, 32, 1959


class MixtureLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(1, HIDDEN, 1)
        self.head = nn.Linear(HIDDEN, 3 * K)

    def forward(self, z, hidden):
        out, hidden = self.rnn(z, hidden)
        return self.head(out), hidden

    def init_hidden(self, bsz):
        zero = torch.zeros(1, bsz, HIDDEN)
        return zero, zero.clone()


def log_density(params, z):
    """log p(z) under the mixture `params` (..., 3K), per position."""
    logits, mu, log_s = params.split(K, dim=-1)
    logw = torch.log_softmax(logits, dim=-1)
    comp = -0.5 * ((z.unsqueeze(-1) - mu) * torch.exp(-log_s)) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(logw + comp, dim=-1)


def inputs_of(z):
    """Step i reads z_{i-1}; the first step reads 0. Shape (T, 1, 1)."""
    return torch.cat([torch.zeros(1), z[:-1]]).view(-1, 1, 1)


def write_csv(path, years, values):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["YEAR", "SUNACTIVITY"])
        for y, v in zip(years, values):
            w.writerow([int(y), v])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    import statsmodels.api as sm

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = sm.datasets.sunspots.load_pandas().data
    years, x = data["YEAR"].to_numpy(), data["SUNACTIVITY"].to_numpy()
    train = years < SPLIT_YEAR
    mean, std = float(x[train].mean()), float(x[train].std())
    write_csv(os.path.join(HERE, "sunspots-train.csv"), years[train], x[train])
    write_csv(os.path.join(HERE, "sunspots-test.csv"), years[~train], x[~train])

    model = MixtureLSTM()
    os.makedirs(CACHE, exist_ok=True)
    ckpt = os.path.join(CACHE, "sunspots.pt")
    z_train = torch.tensor((x[train] - mean) / std, dtype=torch.float32)
    if args.export_only:
        model.load_state_dict(torch.load(ckpt))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(args.steps):
            opt.zero_grad()
            params, _ = model(inputs_of(z_train), model.init_hidden(1))
            loss = -log_density(params.view(-1, 3 * K), z_train).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 250 == 0:
                print(f"step {step}: train NLL {loss.item():.4f} nats per value (normalised)", flush=True)
        torch.save(model.state_dict(), ckpt)
    model.eval()

    onnx_path = os.path.join(HERE, "sunspots.onnx")
    torch.onnx.export(model, (torch.zeros(16, 1, 1), model.init_hidden(1)), onnx_path, dynamo=False, opset_version=17)
    import onnx

    m = onnx.load(onnx_path)
    for key, value in (("arq.head", f"gaussian_mixture:{K}"), ("arq.norm_mean", repr(mean)), ("arq.norm_std", repr(std))):
        m.metadata_props.add(key=key, value=value)
    onnx.save(m, onnx_path)

    z_test = torch.tensor((x[~train] - mean) / std, dtype=torch.float32)
    with torch.no_grad():
        params, _ = model(inputs_of(z_test), model.init_hidden(1))
        params = params.view(-1, 3 * K)
        lp = (log_density(params.double(), z_test.double()) - math.log(std)).tolist()
    ref = {
        "k": K, "hidden": HIDDEN, "norm_mean": mean, "norm_std": std, "test_csv": "sunspots-test.csv",
        "values": len(lp), "log_density_nats": sum(lp), "per_step": lp,
        "first_params": params[0].tolist(),
    }
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"test log density {sum(lp):.4f} nats over {len(lp)} values ({sum(lp) / len(lp):.4f} per value)")


if __name__ == "__main__":
    main()
