#!/usr/bin/env python3
"""The Keras PixelCNN example re-created, trained briefly on scikit-learn's 8x8 digits and
exported channels-last (NHWC) to ONNX: keras-pixelcnn.onnx and its users.json entry.

    KERAS_BACKEND=torch python models/pixelcnn/keras_pixelcnn.py

keras-team/keras-io, examples/generative/pixelcnn.py (ADMoreau, 2020): a PixelConvLayer
(a Conv2D whose kernel is multiplied by a mask A or B inside `call`), a 7x7 mask-A
conv with ReLU, residual blocks (ReLU, 1x1 conv + ReLU, 3x3 mask-B conv + ReLU, 1x1
conv + ReLU, added to the input), two 1x1 mask-B convs with ReLU and a 1x1 conv with a
sigmoid: the probability that a pixel is 1. Binarized as there: `x < 0.33 * max` is 0,
else 1 (on the digits, `x / 16 >= 0.33`). The loss is Keras's binary cross-entropy on
the probabilities. Scaled down: 32 filters instead of 128, 2 residual blocks instead of
5, an 8x8 input. Keras 3 with the torch backend (keras 3.15.1 on torch 2.15: its
Conv2D permutes channels-last to channels-first around every torch conv, which the
export keeps as Transpose nodes). The masks are multiplied into the kernels before the
export, as the tutorials' exports see them, and `call` skips the multiply then.

The ONNX input is float32 (N, 8, 8, 1) in {0, 1}, the output (N, 8, 8, 1) the
probability of 1; metadata arq.head = bernoulli, arq.levels = 2, arq.input = level.
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from users import load_splits  # noqa: E402

NAME = "keras-pixelcnn"
MASKS_PREMULTIPLIED = False


class PixelConvLayer(layers.Layer):
    def __init__(self, mask_type, **kwargs):
        super().__init__()
        self.mask_type = mask_type
        self.conv = layers.Conv2D(**kwargs)

    def build(self, input_shape):
        self.conv.build(input_shape)
        kernel_shape = tuple(self.conv.kernel.shape)
        self.mask = np.zeros(shape=kernel_shape)
        self.mask[: kernel_shape[0] // 2, ...] = 1.0
        self.mask[kernel_shape[0] // 2, : kernel_shape[1] // 2, ...] = 1.0
        if self.mask_type == "B":
            self.mask[kernel_shape[0] // 2, kernel_shape[1] // 2, ...] = 1.0

    def call(self, inputs):
        if not MASKS_PREMULTIPLIED:
            self.conv.kernel.assign(self.conv.kernel * self.mask)
        return self.conv(inputs)


class ResidualBlock(layers.Layer):
    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.a = layers.ReLU()
        self.b = layers.Conv2D(filters=filters, kernel_size=1, activation="relu")
        self.c = PixelConvLayer(mask_type="B", filters=filters // 2, kernel_size=3, activation="relu", padding="same")
        self.d = layers.Conv2D(filters=filters, kernel_size=1, activation="relu")

    def call(self, inputs):
        x = self.a(inputs)
        x = self.b(x)
        x = self.c(x)
        x = self.d(x)
        return layers.add([inputs, x])


def make(filters=32, n_residual_blocks=2):
    inputs = keras.Input(shape=(8, 8, 1))
    x = PixelConvLayer(mask_type="A", filters=filters, kernel_size=7, padding="same", activation="relu")(inputs)
    for _ in range(n_residual_blocks):
        x = ResidualBlock(filters=filters)(x)
    for _ in range(2):
        x = PixelConvLayer(mask_type="B", filters=filters, kernel_size=1, strides=1, activation="relu",
                           padding="valid")(x)
    out = layers.Conv2D(filters=1, kernel_size=1, strides=1, activation="sigmoid", padding="valid")(x)
    return keras.Model(inputs, out)


def binarize(imgs):
    return np.where(imgs < 0.33 * 16, 0, 1).astype(np.float32)[..., None]


def nll(prob, b):
    """Per image nats, from float32 probabilities in float64 (no clipping)."""
    p = prob.astype(np.float64).reshape(len(b), -1)
    b = b.astype(np.float64).reshape(len(b), -1)
    return -(b * np.log(p) + (1 - b) * np.log1p(-p)).sum(1)


def main():
    global MASKS_PREMULTIPLIED
    import onnx
    import onnxruntime as ort

    keras.utils.set_random_seed(0)
    torch.set_num_threads(1)
    tr, va, te = load_splits()
    xtr, xva, xte = binarize(tr), binarize(va), binarize(te)
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss="binary_crossentropy")
    model.fit(x=xtr, y=xtr, batch_size=50, epochs=40, validation_data=(xva, xva), verbose=2)
    MASKS_PREMULTIPLIED = True
    for layer in model._flatten_layers():
        if isinstance(layer, PixelConvLayer):
            layer.conv.kernel.assign(layer.conv.kernel * layer.mask)
    keras_nll = nll(np.asarray(model.predict(xte, verbose=0)), xte).mean()
    path = os.path.join(HERE, f"{NAME}.onnx")
    model.export(path, format="onnx")
    m = onnx.load(path)
    meta = {"arq.head": "bernoulli", "arq.levels": "2", "arq.input": "level"}
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    for n in m.graph.node:  # the exporter's per-node stack traces hold absolute paths
        del n.metadata_props[:]
    onnx.save(m, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ort_nll = nll(sess.run(None, {name: xte})[0], xte)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"{NAME}: test NLL keras {keras_nll:.6f}, onnxruntime {ort_nll.mean():.6f} nats/image; ops {ops}")
    ref_path = os.path.join(HERE, "users.json")
    ref = json.load(open(ref_path))
    ref[NAME] = dict(
        onnx=f"{NAME}.onnx", onnx_bytes=os.path.getsize(path), parameters=int(model.count_params()), ops=ops,
        export=f"keras {keras.__version__} (torch backend) Model.export(format='onnx'), masks pre-multiplied",
        head="bernoulli probability (sigmoid) (N, 8, 8, 1), channels last",
        input="float32 (N, 8, 8, 1) channels last: b = (x / 16 >= 0.33) in {0, 1}", metadata=meta,
        test_nll_keras=round(float(keras_nll), 6), test_nll_onnxruntime=round(float(ort_nll.mean()), 6),
        test_nll_onnxruntime_first3=[round(float(v), 6) for v in ort_nll[:3]], torch_version=torch.__version__)
    with open(ref_path, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
