"""onnxruntime as a PixelCNN user runs it: the baseline of bench/pixelgraph.sh.

    python ort_pixel_sampler.py sample MODEL.onnx --kind K [--images N] [--seed S]
    python ort_pixel_sampler.py score  MODEL.onnx --kind K --data digits_test.npy [--threads T] [--reps R]

`sample`: the per-pixel sampler a user writes: start from an all-zero image, and for each
of the H*W pixels in raster order run one full forward pass of the ONNX model (batch 1,
one intra-op thread, one inter-op thread, onnxruntime's default graph optimizations), then
draw that pixel from the output distribution with numpy and write it into the input.
Times each image (after one warm-up image); prints JSON with the per-image times and the
share of them spent inside `session.run`.

`score`: one `session.run` over the whole test set (batch = all images), T intra-op
threads; the run is timed R times after one warm-up; the NLL (nats/image) is computed from
the float32 output with float64 log-probabilities, as models/pixelcnn/users.py does.

Kinds (how models/pixelcnn/users.py and train.py feed the models and lay out the output):
- `bernoulli-level` (pg-pixelcnn): float32 input b in {0, 1} (b = x > 7 for the digits),
  output (N, 1, H, W) logits, p(b = 1) = sigmoid(l);
- `categorical-int` (t12-pixelcnn): int64 input 0..255 (round(x * 255 / 16) for the
  digits), output (N, 256, 1, H, W) logits, softmax over axis 1;
- `categorical-float` (digits17): float32 input x / (L - 1) * 2 - 1 for levels x in
  0..L-1 (digits: x in 0..16, L = 17), output (N, L, H, W) logits.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

KINDS = ("bernoulli-level", "categorical-int", "categorical-float")


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feed(kind, levels, imgs):
    """The model input for level images (N, H, W) (digits 0..16 for `score`, sampled levels for `sample`)."""
    x = imgs[:, None, :, :]
    if kind == "bernoulli-level":
        return x.astype(np.float32)
    if kind == "categorical-int":
        return x.astype(np.int64)
    return (x.astype(np.float32) / (levels - 1) * 2 - 1).astype(np.float32)


def test_levels(kind, digits):
    """The digits (0..16) as each model sees them: binarized, scaled to 0..255, or as they are."""
    if kind == "bernoulli-level":
        return (digits > 7).astype(np.uint8)
    if kind == "categorical-int":
        return np.rint(digits.astype(np.float64) * 255 / 16).astype(np.int64)
    return digits.astype(np.int64)


def logits_at(kind, out, r, c):
    """The output distribution's parameters at pixel (r, c) of image 0."""
    if kind == "categorical-int":
        return out[0, :, 0, r, c]
    return out[0, :, r, c]


def sample(args):
    sess = session(args.model, 1)
    inp = sess.get_inputs()[0]
    _, _, h, w = inp.shape
    rng = np.random.default_rng(args.seed)
    levels = args.levels
    times, run_times = [], []
    for n in range(args.images + 1):  # image 0 is the warm-up
        img = np.zeros((1, h, w), np.int64)
        t_run = 0.0
        t0 = time.perf_counter()
        for r in range(h):
            for c in range(w):
                x = feed(args.kind, levels, img)
                t1 = time.perf_counter()
                out = sess.run(None, {inp.name: x})[0]
                t_run += time.perf_counter() - t1
                l = logits_at(args.kind, out, r, c).astype(np.float64)
                if args.kind == "bernoulli-level":
                    img[0, r, c] = int(rng.random() < 1.0 / (1.0 + np.exp(-l[0])))
                else:
                    p = np.exp(l - l.max())
                    cdf = np.cumsum(p)
                    img[0, r, c] = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)
        t = time.perf_counter() - t0
        if n > 0:
            times.append(t * 1e3)
            run_times.append(t_run * 1e3)
    print(json.dumps(dict(model=args.model, kind=args.kind, height=h, width=w, images=args.images,
                          forwards_per_image=h * w, ms_per_image=statistics.median(times),
                          run_ms_per_image=statistics.median(run_times), ms_per_image_all=times,
                          ort_version=ort.__version__)))


def score(args):
    sess = session(args.model, args.threads)
    inp = sess.get_inputs()[0]
    digits = np.load(args.data)
    lv = test_levels(args.kind, digits)
    x = feed(args.kind, args.levels, lv)
    out = sess.run(None, {inp.name: x})[0]  # warm-up
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        out = sess.run(None, {inp.name: x})[0]
        times.append(time.perf_counter() - t0)
    o = out.astype(np.float64)
    if args.kind == "bernoulli-level":
        l = o[:, 0]
        b = lv.astype(np.float64)
        nll = (np.logaddexp(0, l) - b * l).reshape(len(lv), -1).sum(1)  # softplus(l) - b l
    else:
        if args.kind == "categorical-int":
            o = o[:, :, 0]
        m = o.max(1, keepdims=True)
        lse = (m + np.log(np.exp(o - m).sum(1, keepdims=True)))[:, 0]
        picked = np.take_along_axis(o, lv[:, None], 1)[:, 0]
        nll = (lse - picked).reshape(len(lv), -1).sum(1)
    s = statistics.median(times)
    print(json.dumps(dict(model=args.model, kind=args.kind, threads=args.threads, images=len(lv), reps=args.reps,
                          run_s=s, images_per_s=len(lv) / s, nats_per_image=float(nll.mean()),
                          run_s_all=times, ort_version=ort.__version__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sample", "score"])
    ap.add_argument("model")
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--levels", type=int, default=17, help="categorical-float: levels L (digits17: 17)")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="models/pixelcnn/digits_test.npy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    (sample if args.mode == "sample" else score)(args)


if __name__ == "__main__":
    main()
