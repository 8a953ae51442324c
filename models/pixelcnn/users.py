#!/usr/bin/env python3
"""PixelCNNs as users write them, re-created from their public code, trained briefly on
scikit-learn's 8x8 digits and exported the way users export them: the test bed of
`arq convert`'s causal-convolution graph importer (issue 14).

    python models/pixelcnn/users.py --model pg-pixelcnn   # pytorch-generative PixelCNN
    python models/pixelcnn/users.py --model t12-pixelcnn  # uvadlc Tutorial 12 PixelCNN
    python models/pixelcnn/users.py --model pg-gated      # pytorch-generative GatedPixelCNN

Each run writes models/pixelcnn/<model>.onnx (torch.onnx.export, dynamo=False, opset 17)
and updates its entry in models/pixelcnn/users.json with the onnxruntime test NLL.

Data and split as train.py: load_digits() (1797, 8, 8) in 0..16, test = [1350, 1797).

- pg-pixelcnn: EugenHotaj/pytorch-generative, models/autoregressive/pixel_cnn.py and
  nn/convolution.py (CausalConv2d): a 7x7 mask-A causal conv, ReLU residual blocks
  (1x1 down, 3x3 mask-B, 1x1 up; `x = x + layer(x)` on a block that itself returns
  `x + net(x)`, as there), a ReLU/1x1/ReLU/1x1 head, one Bernoulli logit per pixel.
  Input: the binarized image b = (x > 7) as float {0, 1}, as their binarized MNIST.
  Widths scaled down (residual_channels 8, 2 blocks, head 16).
- t12-pixelcnn: phlippe/uvadlc_notebooks, tutorial 12: masked vertical and horizontal
  stacks (VerticalStackConvolution / HorizontalStackConvolution, masks multiplied into
  the weights), GatedMaskedConv layers with dilations 1, 2, 1, ELU before a 1x1 output
  of 256 logits, reshaped to (N, 256, 1, H, W). Input: int64 pixel values 0..255 (the
  digits scaled by round(x * 255 / 16)), scaled in the graph by `x / 255 * 2 - 1`.
  c_hidden 16 instead of 64, three gated layers instead of seven.

- pg-gated: EugenHotaj/pytorch-generative,
  pytorch_generative/models/autoregressive/gated_pixel_cnn.py (GatedPixelCNNLayer,
  GatedPixelCNN): no masks; vertical stacks shifted by conv pads and a crop to the first
  H rows, horizontal stacks by pads and a crop to the first W columns (Conv + Slice in
  the export), gated tanh * sigmoid, 1x1 residual and skip connections, the skips summed
  into a ReLU/1x1/ReLU/1x1 head, one Bernoulli logit per pixel. Input as pg-pixelcnn.
  gated_channels 16, n_gated 2, head_channels 16 (128, 10, 32 there).

The first two multiply the mask into `weight.data` inside forward; the exporter sees
the already-masked weights (zero taps in full kernels with symmetric pads).

    python models/pixelcnn/users.py --model t12-pixelcnn --dynamo

loads the weights of the committed <model>.onnx (masks already multiplied in) and exports
the same network with PyTorch's default exporter (dynamo=True, opset 18) to
<model>-dynamo.onnx: with the masks pre-multiplied, forward is a plain convolution, which
is what lets dynamo trace it.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
H = W = 8


def load_splits():
    from sklearn.datasets import load_digits

    imgs = load_digits().images.astype(np.uint8)
    return imgs[:1000], imgs[1000:1350], imgs[1350:]


# -------------------------------------------------------------------------------------
# pytorch-generative PixelCNN


# Set by --dynamo: the weights are already masked, so forward skips the in-place multiply
# (which dynamo cannot trace).
MASKS_PREMULTIPLIED = False


class CausalConv2d(nn.Conv2d):
    def __init__(self, mask_center, *args, **kwargs):
        super().__init__(*args, **kwargs)
        i, o, h, w = self.weight.shape
        mask = torch.zeros((i, o, h, w))
        mask.data[:, :, : h // 2, :] = 1
        mask.data[:, :, h // 2, : w // 2 + int(not mask_center)] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        if not MASKS_PREMULTIPLIED:
            self.weight.data *= self.mask
        return super().forward(x)


class CausalResidualBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self._net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(n, n // 2, 1), nn.ReLU(),
            CausalConv2d(False, n // 2, n // 2, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(n // 2, n, 1))

    def forward(self, x):
        return x + self._net(x)


class PgPixelCNN(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, n_residual=2, residual_channels=8, head_channels=16):
        super().__init__()
        self._input = CausalConv2d(True, in_channels, 2 * residual_channels, kernel_size=7, padding=3)
        self._causal_layers = nn.ModuleList([CausalResidualBlock(2 * residual_channels) for _ in range(n_residual)])
        self._head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(2 * residual_channels, head_channels, 1), nn.ReLU(),
            nn.Conv2d(head_channels, out_channels, 1))

    def forward(self, x):
        x = self._input(x)
        for layer in self._causal_layers:
            x = x + layer(x)
        return self._head(x)


# -------------------------------------------------------------------------------------
# uvadlc Tutorial 12 PixelCNN


class MaskedConvolution(nn.Module):
    def __init__(self, c_in, c_out, mask, **kwargs):
        super().__init__()
        kernel_size = (mask.shape[0], mask.shape[1])
        dilation = kwargs.get("dilation", 1)
        padding = tuple(dilation * (kernel_size[i] - 1) // 2 for i in range(2))
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=padding, **kwargs)
        self.register_buffer("mask", mask[None, None])

    def forward(self, x):
        if not MASKS_PREMULTIPLIED:
            self.conv.weight.data *= self.mask
        return self.conv(x)


class VerticalStackConvolution(MaskedConvolution):
    def __init__(self, c_in, c_out, kernel_size=3, mask_center=False, **kwargs):
        mask = torch.ones(kernel_size, kernel_size)
        mask[kernel_size // 2 + 1:, :] = 0
        if mask_center:
            mask[kernel_size // 2, :] = 0
        super().__init__(c_in, c_out, mask, **kwargs)


class HorizontalStackConvolution(MaskedConvolution):
    def __init__(self, c_in, c_out, kernel_size=3, mask_center=False, **kwargs):
        mask = torch.ones(1, kernel_size)
        mask[0, kernel_size // 2 + 1:] = 0
        if mask_center:
            mask[0, kernel_size // 2] = 0
        super().__init__(c_in, c_out, mask, **kwargs)


class GatedMaskedConv(nn.Module):
    def __init__(self, c_in, **kwargs):
        super().__init__()
        self.conv_vert = VerticalStackConvolution(c_in, c_out=2 * c_in, **kwargs)
        self.conv_horiz = HorizontalStackConvolution(c_in, c_out=2 * c_in, **kwargs)
        self.conv_vert_to_horiz = nn.Conv2d(2 * c_in, 2 * c_in, kernel_size=1, padding=0)
        self.conv_horiz_1x1 = nn.Conv2d(c_in, c_in, kernel_size=1, padding=0)

    def forward(self, v_stack, h_stack):
        v_stack_feat = self.conv_vert(v_stack)
        v_val, v_gate = v_stack_feat.chunk(2, dim=1)
        v_stack_out = torch.tanh(v_val) * torch.sigmoid(v_gate)
        h_stack_feat = self.conv_horiz(h_stack)
        h_stack_feat = h_stack_feat + self.conv_vert_to_horiz(v_stack_feat)
        h_val, h_gate = h_stack_feat.chunk(2, dim=1)
        h_stack_feat = torch.tanh(h_val) * torch.sigmoid(h_gate)
        h_stack_out = self.conv_horiz_1x1(h_stack_feat)
        return v_stack_out, h_stack_out + h_stack


class T12PixelCNN(nn.Module):
    def __init__(self, c_in=1, c_hidden=16):
        super().__init__()
        self.conv_vstack = VerticalStackConvolution(c_in, c_hidden, mask_center=True)
        self.conv_hstack = HorizontalStackConvolution(c_in, c_hidden, mask_center=True)
        self.conv_layers = nn.ModuleList([
            GatedMaskedConv(c_hidden), GatedMaskedConv(c_hidden, dilation=2), GatedMaskedConv(c_hidden)])
        self.conv_out = nn.Conv2d(c_hidden, c_in * 256, kernel_size=1, padding=0)

    def forward(self, x):
        x = (x.float() / 255.0) * 2 - 1
        v_stack = self.conv_vstack(x)
        h_stack = self.conv_hstack(x)
        for layer in self.conv_layers:
            v_stack, h_stack = layer(v_stack, h_stack)
        out = self.conv_out(F.elu(h_stack))
        return out.reshape(out.shape[0], 256, out.shape[1] // 256, out.shape[2], out.shape[3])


# -------------------------------------------------------------------------------------
# pytorch-generative GatedPixelCNN
#
# EugenHotaj/pytorch-generative, pytorch_generative/models/autoregressive/gated_pixel_cnn.py
# (GatedPixelCNNLayer, GatedPixelCNN) and nn/convolution.py (GatedActivation), as
# there: no masks at all. The vertical stack is a 1xN conv then an (N//2+1)x1 conv
# padded N//2+1 rows on both sides and cropped to the first H rows (so row r sees rows
# r-N//2-1 .. r-1 of its input), plus a 1x1 conv of the stack's input at the current
# row; the horizontal stack a 1x(N//2+1) conv padded on both sides and cropped to the
# first W columns (shifted one more column left in the input layer, mask_center), plus
# the 1x1 link from the vertical pre-activation; gated tanh * sigmoid; a 1x1 residual
# (not in the input layer) and a 1x1 skip summed over layers into the ReLU/1x1 head.


class GatedActivation(nn.Module):
    def forward(self, x):
        _, c, _, _ = x.shape
        x, gate = x[:, : c // 2, :, :], x[:, c // 2:, :, :]
        return torch.tanh(x) * torch.sigmoid(gate)


class GatedPixelCNNLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, mask_center=False):
        super().__init__()
        self._activation = GatedActivation()
        self._padding = (kernel_size - 1) // 2
        self._mask_center = mask_center
        self._vstack_1xN = nn.Conv2d(in_channels, out_channels, kernel_size=(1, kernel_size),
                                     padding=(0, self._padding))
        self._vstack_Nx1 = nn.Conv2d(out_channels, 2 * out_channels, kernel_size=(kernel_size // 2 + 1, 1),
                                     padding=(self._padding + 1, 0))
        self._vstack_1x1 = nn.Conv2d(in_channels, 2 * out_channels, kernel_size=1)
        self._link = nn.Conv2d(2 * out_channels, 2 * out_channels, kernel_size=1)
        self._hstack_1xN = nn.Conv2d(in_channels, 2 * out_channels, kernel_size=(1, kernel_size // 2 + 1),
                                     padding=(0, self._padding + int(self._mask_center)))
        self._hstack_residual = nn.Conv2d(out_channels, out_channels, kernel_size=1)
        self._hstack_skip = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, vstack_input, hstack_input):
        _, _, h, w = vstack_input.shape
        vstack = self._vstack_Nx1(self._vstack_1xN(vstack_input))[:, :, :h, :]
        link = self._link(vstack)
        vstack = vstack + self._vstack_1x1(vstack_input)
        vstack = self._activation(vstack)
        hstack = link + self._hstack_1xN(hstack_input)[:, :, :, :w]
        hstack = self._activation(hstack)
        skip = self._hstack_skip(hstack)
        hstack = self._hstack_residual(hstack)
        if not self._mask_center:
            hstack = hstack + hstack_input
        return vstack, hstack, skip


class PgGatedPixelCNN(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, n_gated=2, gated_channels=16, head_channels=16):
        super().__init__()
        self._input = GatedPixelCNNLayer(in_channels, gated_channels, kernel_size=7, mask_center=True)
        self._gated_layers = nn.ModuleList([
            GatedPixelCNNLayer(gated_channels, gated_channels, kernel_size=3, mask_center=False)
            for _ in range(n_gated)])
        self._head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(gated_channels, head_channels, kernel_size=1), nn.ReLU(),
            nn.Conv2d(head_channels, out_channels, kernel_size=1))

    def forward(self, x):
        vstack, hstack, skip_connections = self._input(x, x)
        for gated_layer in self._gated_layers:
            vstack, hstack, skip = gated_layer(vstack, hstack)
            skip_connections = skip_connections + skip  # `+=` there: the same sum
        return self._head(skip_connections)


# -------------------------------------------------------------------------------------
# data, losses, per model


def pg_data(imgs):
    b = torch.from_numpy((imgs > 7).astype(np.float32)).unsqueeze(1)
    return b, b


def pg_nll(out, target):
    return F.binary_cross_entropy_with_logits(out, target, reduction="none").flatten(1).sum(1)


def t12_data(imgs):
    x = torch.from_numpy(np.rint(imgs.astype(np.float64) * 255 / 16).astype(np.int64)).unsqueeze(1)
    return x, x


def t12_nll(out, target):
    return F.cross_entropy(out, target, reduction="none").flatten(1).sum(1)


MODELS = {
    "pg-pixelcnn": dict(make=PgPixelCNN, data=pg_data, nll=pg_nll, epochs=60, lr=3e-3,
                        meta={"arq.head": "bernoulli", "arq.levels": "2", "arq.input": "level"},
                        head="bernoulli logit (N, 1, 8, 8)", input="float32 (N, 1, 8, 8): b = (x > 7) in {0, 1}"),
    "pg-gated": dict(make=PgGatedPixelCNN, data=pg_data, nll=pg_nll, epochs=60, lr=3e-3,
                     meta={"arq.head": "bernoulli", "arq.levels": "2", "arq.input": "level"},
                     head="bernoulli logit (N, 1, 8, 8)", input="float32 (N, 1, 8, 8): b = (x > 7) in {0, 1}"),
    "t12-pixelcnn": dict(make=T12PixelCNN, data=t12_data, nll=t12_nll, epochs=40, lr=3e-3,
                         meta={"arq.head": "categorical", "arq.levels": "256"},
                         head="categorical logits (N, 256, 1, 8, 8)",
                         input="int64 (N, 1, 8, 8): round(x * 255 / 16), scaled in the graph"),
}


def train(model, cfg, xtr, ttr, xva, tva):
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(0)
    for ep in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], 50):
            idx = perm[i:i + 50]
            loss = cfg["nll"](model(xtr[idx]), ttr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep % 10 == 9 or ep == cfg["epochs"] - 1:
            model.eval()
            with torch.no_grad():
                print(f"epoch {ep + 1}: validation NLL {cfg['nll'](model(xva), tva).mean().item():.3f} nats/image")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--reference-only", action="store_true",
                    help="recompute the onnxruntime NLL of the committed ONNX file, without training")
    ap.add_argument("--dynamo", action="store_true",
                    help="export the committed model's weights again with dynamo=True, opset 18")
    args = ap.parse_args()
    if args.dynamo:
        return export_dynamo(args.model)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = MODELS[args.model]
    tr, va, te = load_splits()
    (xtr, ttr), (xva, tva), (xte, tte) = cfg["data"](tr), cfg["data"](va), cfg["data"](te)
    model = cfg["make"]()
    path = os.path.join(HERE, f"{args.model}.onnx")
    import onnx
    import onnxruntime as ort

    if not args.reference_only:
        train(model, cfg, xtr, ttr, xva, tva)
        model.eval()
        torch.onnx.export(model, (xte[:1],), path, input_names=["x"], output_names=["out"], opset_version=17,
                          dynamo=False, dynamic_axes={"x": {0: "N"}, "out": {0: "N"}})
        m = onnx.load(path)
        for k, v in cfg["meta"].items():
            p = m.metadata_props.add()
            p.key, p.value = k, v
        onnx.save(m, path)
    m = onnx.load(path)
    ref_path = os.path.join(HERE, "users.json")
    ref = json.load(open(ref_path)) if os.path.exists(ref_path) else {}
    if args.reference_only:
        torch_nll = ref[args.model]["test_nll_torch"]
        model = None
    else:
        with torch.no_grad():
            torch_nll = cfg["nll"](model(xte), tte).mean().item()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {"x": xte.numpy()})[0]).double()
    tgt = tte.double() if tte.dtype.is_floating_point else tte
    ort_nll = cfg["nll"](out, tgt)
    print(f"{args.model}: test NLL torch {torch_nll:.6f}, onnxruntime {ort_nll.mean().item():.6f} nats/image; "
          f"ops {sorted({n.op_type for n in m.graph.node})}")
    ref["_conventions"] = {
        "data": "sklearn digits, test split [1350, 1797) (digits_test.npy)",
        "nll": "mean nats per image over the test split: onnxruntime's float32 output, log-probabilities in float64 (test_nll_torch: PyTorch in float32)",
        "export": "torch.onnx.export(dynamo=False, opset_version=17), metadata arq.* added after",
    }
    ref[args.model] = dict(
        onnx=f"{args.model}.onnx", onnx_bytes=os.path.getsize(path),
        parameters=ref[args.model]["parameters"] if model is None else sum(p.numel() for p in model.parameters()),
        ops=sorted({n.op_type for n in m.graph.node}), head=cfg["head"], input=cfg["input"],
        metadata=cfg["meta"], test_nll_torch=round(torch_nll, 6), test_nll_onnxruntime=round(ort_nll.mean().item(), 6),
        test_nll_onnxruntime_first3=[round(v, 6) for v in ort_nll[:3].tolist()],
        torch_version=torch.__version__)
    with open(ref_path, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")


def export_dynamo(name):
    """<name>-dynamo.onnx: the weights of <name>.onnx, exported by dynamo at opset 18."""
    global MASKS_PREMULTIPLIED
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    MASKS_PREMULTIPLIED = True
    cfg = MODELS[name]
    model = cfg["make"]()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(os.path.join(HERE, f"{name}.onnx")).graph.initializer}
    state = model.state_dict()
    # The exporter drops what the output does not use (GatedPixelCNN's last vertical
    # stack); those stay as initialized, and the outputs are compared below.
    unused = [k for k in state if k not in weights and not k.endswith("mask")]
    for k in state:
        if k in weights:
            state[k] = weights[k]
    if unused:
        print(f"not in {name}.onnx (unused by the output): {unused}")
    model.load_state_dict(state)
    model.eval()
    _, _, te = load_splits()
    xte, tte = cfg["data"](te)
    path = os.path.join(HERE, f"{name}-dynamo.onnx")
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (xte[:2],), path, input_names=["x"], output_names=["out"], opset_version=18,
                      dynamo=True, external_data=False, dynamic_shapes={"x": {0: batch}})
    m = onnx.load(path)
    del m.metadata_props[:]
    for k, v in cfg["meta"].items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    for n in m.graph.node:  # the exporter's per-node stack traces hold absolute paths
        del n.metadata_props[:]
    onnx.save(m, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {"x": xte.numpy()})[0]).double()
    tgt = tte.double() if tte.dtype.is_floating_point else tte
    ort_nll = cfg["nll"](out, tgt)
    first = ort.InferenceSession(os.path.join(HERE, f"{name}.onnx"), providers=["CPUExecutionProvider"])
    diff = np.abs(first.run(None, {"x": xte.numpy()})[0] - out.float().numpy()).max()
    if diff > 1e-4:
        raise SystemExit(f"{name}-dynamo.onnx differs from {name}.onnx by {diff}")
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"{name}-dynamo: max |diff| to {name}.onnx {diff:.2e}; test NLL onnxruntime {ort_nll.mean().item():.6f} nats/image; ops {ops}")
    ref_path = os.path.join(HERE, "users.json")
    ref = json.load(open(ref_path))
    ref[f"{name}-dynamo"] = dict(
        onnx=f"{name}-dynamo.onnx", onnx_bytes=os.path.getsize(path), ops=ops,
        export="torch.onnx.export(dynamo=True, opset_version=18), masks pre-multiplied, weights of " + f"{name}.onnx",
        head=cfg["head"], input=cfg["input"], metadata=cfg["meta"],
        test_nll_onnxruntime=round(ort_nll.mean().item(), 6),
        test_nll_onnxruntime_first3=[round(v, 6) for v in ort_nll[:3].tolist()], torch_version=torch.__version__)
    with open(ref_path, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
