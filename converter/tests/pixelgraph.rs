//! Users' PixelCNNs (`models/pixelcnn/users.py`: pytorch-generative's PixelCNN and
//! Tutorial 12's, from both of PyTorch's exporters) through the pixel-graph importer: test-split NLL against onnxruntime's
//! (`users.json`), q8 against f32, cached generation against the full forward, leaking
//! taps and unsupported operators refused by name, and the CLI on the converted files.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::{GraphSession, GraphSessionConfig, PixelGraph};
use arq_convert::aligned::ModelBytes;
use arq_convert::images;
use arq_convert::import::onnx::{convert_onnx, GraphSource, OnnxConvertOptions};
use arq_convert::quantize::Quant;
use prost::Message;
use tract_onnx::pb;

/// Each exported twice: `dynamo=False` (opset 17, shape arithmetic around chunk and
/// reshape) and dynamo (opset 18, masks pre-multiplied).
/// And the Keras example (`keras_pixelcnn.py`), channels last, exported by Keras 3.
const MODELS: [&str; 7] = [
    "pg-pixelcnn",
    "t12-pixelcnn",
    "pg-gated",
    "keras-pixelcnn",
    "pg-pixelcnn-dynamo",
    "t12-pixelcnn-dynamo",
    "pg-gated-dynamo",
];

/// Whether the model reads binarized digits (else 0..255).
fn binary(name: &str) -> bool {
    name.starts_with("pg-") || name.starts_with("keras-")
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pixelcnn")
}

fn onnx_path(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.onnx"))
}

fn reference(name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("users.json")).unwrap()).unwrap();
    v[name].clone()
}

/// The test split as each model sees it: binarized (pytorch-generative's x > 7; Keras's
/// example x / max >= 0.33) or scaled to 0..255.
fn test_images(name: &str) -> Vec<Vec<u8>> {
    let imgs = images::read_npy_u8(&models_dir().join("digits_test.npy")).unwrap();
    (0..imgs.n)
        .map(|i| {
            imgs.image(i)
                .iter()
                .map(|&x| {
                    if name.starts_with("pg-") {
                        u8::from(x > 7)
                    } else if name.starts_with("keras-") {
                        u8::from(x as f64 >= 0.33 * 16.0)
                    } else {
                        (x as f64 * 255.0 / 16.0).round() as u8
                    }
                })
                .collect()
        })
        .collect()
}

fn arq_bytes(name: &str, quant: Quant) -> ModelBytes {
    let src = GraphSource::from_onnx(&onnx_path(name), None).unwrap();
    ModelBytes::copy_of(&src.to_arq(quant).unwrap().0)
}

fn nlls(model: &PixelGraph<'_>, imgs: &[Vec<u8>]) -> Vec<f64> {
    let mut arena = vec![0u8; model.memory_plan(&GraphSessionConfig::default()).unwrap()];
    let mut s = GraphSession::new(model, &mut arena, GraphSessionConfig::default()).unwrap();
    imgs.iter().map(|im| s.nll(im).unwrap()).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn f32_nll_matches_onnxruntime_and_q8_stays_close() {
    for name in MODELS {
        let imgs = test_images(name);
        let r = reference(name);
        let f32b = arq_bytes(name, Quant::F32);
        let model = PixelGraph::load(f32b.bytes()).unwrap();
        let got = nlls(&model, &imgs);
        let want = r["test_nll_onnxruntime"].as_f64().unwrap();
        println!("{name}: arq f32 {:.6} vs onnxruntime {want:.6} nats/image", mean(&got));
        assert!((mean(&got) - want).abs() < 1e-4, "{name}: {} vs {want}", mean(&got));
        for (i, w) in r["test_nll_onnxruntime_first3"].as_array().unwrap().iter().enumerate() {
            let w = w.as_f64().unwrap();
            assert!((got[i] - w).abs() < 1e-4, "{name} image {i}: {} vs {w}", got[i]);
        }
        let q8b = arq_bytes(name, Quant::Q8);
        let q8 = PixelGraph::load(q8b.bytes()).unwrap();
        let bpd = |nats: f64| nats / 64.0 / std::f64::consts::LN_2;
        let (f, q) = (bpd(mean(&got)), bpd(mean(&nlls(&q8, &imgs))));
        println!("{name}: q8 {q:.5} vs f32 {f:.5} bits/dim");
        assert!((q - f).abs() < 0.01, "{name}: q8 {q} vs f32 {f} bits/dim");
    }
}

#[test]
fn cached_generation_equals_the_full_forward_on_users_models() {
    for name in MODELS {
        let imgs = test_images(name);
        for quant in [Quant::F32, Quant::Q8] {
            let bytes = arq_bytes(name, quant);
            let model = PixelGraph::load(bytes.bytes()).unwrap();
            let cfg = GraphSessionConfig::full(1);
            let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
            let mut s = GraphSession::new(&model, &mut arena, cfg).unwrap();
            for im in &imgs[..3] {
                s.reset();
                let mut cached = Vec::new();
                for &v in im {
                    cached.extend_from_slice(s.params().unwrap());
                    s.push_level(v as usize).unwrap();
                }
                let full = s.forward_full(im).unwrap();
                assert!(cached.iter().zip(full).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {quant:?}");
                assert_eq!(cached.len(), full.len());
            }
        }
    }
}

fn load_proto(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
    m.graph.as_mut().unwrap()
}

/// Converting `m` fails with one line containing every `want`; nothing is written.
fn refused(tag: &str, m: &pb::ModelProto, want: &[&str]) {
    let dir = TempDir::new(tag);
    let input = dir.path("model.onnx");
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    let out = dir.path("out.arq");
    let o = OnnxConvertOptions { quant: Quant::Q8, force: false, head: None, vocab: None };
    let err = format!("{:#}", convert_onnx(&input, &out, &o).expect_err("conversion should fail"));
    println!("refused: {err}");
    assert!(!err.contains('\n'), "not one line: {err}");
    for w in want {
        assert!(err.contains(w), "'{err}' does not contain '{w}'");
    }
    assert!(!out.exists(), "output left behind");
}

/// Sets the centre tap of the first convolution's weights to a non-zero value: the
/// 7x7 mask A becomes a mask B.
fn unmask_centre(m: &mut pb::ModelProto, weight: &str, k: usize) {
    let t = graph(m).initializer.iter_mut().find(|t| t.name == weight).unwrap();
    let (co, ci) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut w: Vec<f32> = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let centre = (k / 2) * k + k / 2;
    for oc in 0..co * ci {
        w[oc * k * k + centre] = 0.5;
    }
    t.raw_data = w.iter().flat_map(|v| v.to_le_bytes()).collect();
}

/// The index of the node named `name`; in a dynamo export, of the node whose output is
/// named after that Conv's weight.
fn node_named(m: &pb::ModelProto, name: &str) -> usize {
    let g = m.graph.as_ref().unwrap();
    let weight = format!("{}.weight", name.trim_start_matches('/').trim_end_matches("/Conv").replace('/', "."));
    g.node
        .iter()
        .position(|n| n.name == name || (n.op_type == "Conv" && n.input.get(1) == Some(&weight)))
        .unwrap_or_else(|| panic!("no node {name}"))
}

fn set_ints(n: &mut pb::NodeProto, name: &str, v: &[i64]) {
    let a = n.attribute.iter_mut().find(|a| a.name == name).unwrap();
    a.ints = v.to_vec();
}

#[test]
fn leaking_taps_and_unsupported_operators_are_refused_by_name() {
    let pg = load_proto(&onnx_path("pg-pixelcnn"));
    // Mask B where mask A is needed.
    let mut m = pg.clone();
    let w = graph(&mut m).node[0].input[1].clone();
    unmask_centre(&mut m, &w, 7);
    refused("mask-b", &m, &["node 0 (Conv", "tap (3, 3) of its 7x7 kernel", "current pixel of the image", "mask A"]);
    // The first layer's pads one row too low: row 3 of the mask reads the row below.
    let mut m = pg.clone();
    set_ints(&mut graph(&mut m).node[0], "pads", &[2, 3, 4, 3]);
    refused("pad-low", &m, &["node 0 (Conv", "tap (3, 0) of its 7x7 kernel, at offset (1, -3)", "row(s) below"]);
    // A pad that changes the image size.
    let mut m = pg.clone();
    set_ints(&mut graph(&mut m).node[0], "pads", &[3, 3, 2, 3]);
    refused("pad-size", &m, &["node 0 (Conv", "pads [3, 3, 2, 3]", "change the image size"]);
    // An operator a pixel graph has no node for.
    let mut m = pg.clone();
    let i = graph(&mut m).node.iter().position(|n| n.op_type == "Relu").unwrap();
    graph(&mut m).node[i].op_type = "Softplus".into();
    refused("softplus", &m, &[&format!("node {i} (Softplus"), "unsupported operator Softplus"]);
    // Tutorial 12: the vertical stack's first conv one row too low sees its own row.
    let mut m = load_proto(&onnx_path("t12-pixelcnn"));
    let i = graph(&mut m).node.iter().position(|n| n.op_type == "Conv").unwrap();
    set_ints(&mut graph(&mut m).node[i], "pads", &[0, 1, 2, 1]);
    refused("t12-low", &m, &[&format!("node {i} (Conv"), "at offset (0, 0)", "current pixel of the image"]);
    // The GatedPixelCNN's vertical shift one row too low: its 4x1 conv padded 3 rows on
    // top instead of 4 reads the current row of the 1x7 conv, which sees 3 pixels right.
    let mut m = load_proto(&onnx_path("pg-gated"));
    let i = node_named(&m, "/_input/_vstack_Nx1/Conv");
    set_ints(&mut graph(&mut m).node[i], "pads", &[3, 0, 5, 0]);
    refused(
        "gated-shift-low",
        &m,
        &[&format!("node {i} (Conv"), "tap (3, 0) of its 4x1 kernel, at offset (0, 0)", "shifted down a row"],
    );
    // Its input layer's horizontal conv with mask B (padded 3 columns instead of 4, as
    // a layer with mask_center=False): the 1x4 kernel's last tap is the current pixel.
    let mut m = load_proto(&onnx_path("pg-gated-dynamo"));
    let i = node_named(&m, "/_input/_hstack_1xN/Conv");
    set_ints(&mut graph(&mut m).node[i], "pads", &[0, 3, 0, 3]);
    refused(
        "gated-mask-b",
        &m,
        &[&format!("node {i} (Conv"), "tap (0, 3) of its 1x4 kernel, at offset (0, 0)", "current pixel of the image"],
    );
    // A head that does not fit the output's channels.
    let err = GraphSource::from_onnx(&onnx_path("t12-pixelcnn"), Some("bernoulli".parse().unwrap())).unwrap_err();
    assert!(format!("{err:#}").contains("bernoulli head, but the graph output has 256 output channels"), "{err:#}");
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "arq failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn cli_converts_scores_samples_and_benches_users_models() {
    let dir = TempDir::new("graph-cli");
    // A leaking graph: exit 1, one line naming the node and tap, nothing written.
    let mut m = load_proto(&onnx_path("pg-pixelcnn"));
    let w = graph(&mut m).node[0].input[1].clone();
    unmask_centre(&mut m, &w, 7);
    let (bad, bad_out) = (dir.path("leak.onnx"), dir.path("leak.arq"));
    std::fs::write(&bad, m.encode_to_vec()).unwrap();
    let out = arq(&["convert", bad.to_str().unwrap(), "-o", bad_out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("node 0 (Conv") && err.contains("tap (3, 3)") && !err.contains("panicked"), "{err}");
    assert!(!bad_out.exists());
    for name in MODELS {
        let arq_path = dir.path(&format!("{name}.arq"));
        let (a, o) = (arq_path.to_str().unwrap(), onnx_path(name));
        let conv = arq(&["convert", o.to_str().unwrap(), "-o", a, "--quant", "f32"]);
        ok(&conv);
        let info = ok(&arq(&["inspect", a]));
        assert!(info.contains("pixelgraph"), "{info}");
        // Score the test split as the model sees it.
        let imgs = test_images(name);
        let data: Vec<u8> = imgs.concat();
        let npy = dir.path(&format!("{name}-test.npy"));
        let set = images::Images { n: imgs.len(), height: 8, width: 8, data };
        images::write_npy_u8(&npy, &set).unwrap();
        let score = ok(&arq(&["score", a, npy.to_str().unwrap(), "--json"]));
        let v: serde_json::Value = serde_json::from_str(score.trim()).unwrap();
        let want = reference(name)["test_nll_onnxruntime"].as_f64().unwrap();
        let got = v["nats_per_image"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{name}: arq score {got} vs {want}");
        let png = dir.path(&format!("{name}.png"));
        ok(&arq(&["sample", a, "-n", "4", "--seed", "3", "-o", png.to_str().unwrap()]));
        assert!(png.exists());
        // Imputation: the bottom half missing (exact), then a hole in the middle (SMC).
        let grey: Vec<u8> =
            imgs[0].iter().map(|&v| images::level_to_gray(v, if binary(name) { 2 } else { 256 })).collect();
        let (img_png, out_png) = (dir.path(&format!("{name}-in.png")), dir.path(&format!("{name}-out.png")));
        images::write_png_gray(&img_png, 8, 8, &grey).unwrap();
        for (tag, missing) in [("exact", (32..64).collect::<Vec<usize>>()), ("smc", vec![27, 28, 35, 36])] {
            let mask: Vec<u8> = (0..64).map(|i| if missing.contains(&i) { 255 } else { 0 }).collect();
            let mask_png = dir.path(&format!("{name}-{tag}-mask.png"));
            images::write_png_gray(&mask_png, 8, 8, &mask).unwrap();
            let (i, m, o) = (img_png.to_str().unwrap(), mask_png.to_str().unwrap(), out_png.to_str().unwrap());
            let out = ok(&arq(&["impute", a, "--image", i, "--mask", m, "-o", o, "--particles", "8", "--json"]));
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(v["method"], tag, "{out}");
        }
        let bench = ok(&arq(&["bench", a, "--reps", "2", "--naive-reps", "1", "--json"]));
        let b: serde_json::Value = serde_json::from_str(bench.trim()).unwrap();
        assert!(b["cached_ms_per_image"].as_f64().unwrap() > 0.0, "{bench}");
    }
}

/// The arena each users' model needs, pinned (cached generation; with the full forward):
/// a change in the plan shows here first. Both exporters give the same graph.
#[test]
fn arena_sizes_are_pinned() {
    for (name, cached, full) in [
        ("pg-pixelcnn", 11647, 95807),
        ("t12-pixelcnn", 46015, 376575),
        ("pg-pixelcnn-dynamo", 11647, 95807),
        ("t12-pixelcnn-dynamo", 46015, 376575),
    ] {
        let bytes = arq_bytes(name, Quant::Q8);
        let model = PixelGraph::load(bytes.bytes()).unwrap();
        assert_eq!(model.memory_plan(&GraphSessionConfig::default()).unwrap(), cached, "{name}");
        assert_eq!(model.memory_plan(&GraphSessionConfig::full(1)).unwrap(), full, "{name}");
    }
}

fn f32_init(name: &str, dims: &[i64], v: Vec<f32>) -> pb::TensorProto {
    let raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    pb::TensorProto { name: name.into(), dims: dims.to_vec(), data_type: 1, raw_data, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs[0]),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
}

/// Random `[co, ci, k, k]` weights under a PixelCNN mask (A: without the centre).
fn masked_weights(seed: &mut u64, co: usize, ci: usize, k: usize, mask_a: bool) -> Vec<f32> {
    let m = k / 2;
    let mut v = Vec::new();
    for _ in 0..co * ci {
        for i in 0..k {
            for j in 0..k {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8;
                let keep = i < m || (i == m && (j < m || (j == m && !mask_a)));
                v.push(if keep { r } else { 0.0 });
            }
        }
    }
    v
}

/// The ops the two users' models do not use (Neg, Concat of maps, Elu with alpha, Mul
/// and Add by a scalar, Split with sizes, Sub of maps), in a small graph whose
/// outputs arq must reproduce as tract computes them.
#[test]
fn a_graph_of_the_other_ops_matches_tract() {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let mut seed = 7u64;
    let dims = [None, Some(1), Some(8), Some(8)].map(|d| Dimension {
        value: Some(d.map_or(Value::DimParam("N".into()), Value::DimValue)),
        ..Default::default()
    });
    let x = pb::ValueInfoProto {
        name: "x".into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim: dims.to_vec() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pads = || ints("pads", &[1, 1, 1, 1]);
    let alpha = pb::AttributeProto { name: "alpha".into(), r#type: 1, f: 0.7, ..Default::default() };
    let g = pb::GraphProto {
        node: vec![
            node("Conv", &["x", "w1", "b1"], &["c1"], vec![pads()]),
            node("Neg", &["c1"], &["n1"], vec![]),
            node(
                "Concat",
                &["c1", "n1"],
                &["cat"],
                vec![pb::AttributeProto { name: "axis".into(), r#type: 2, i: 1, ..Default::default() }],
            ),
            node("Elu", &["cat"], &["e"], vec![alpha]),
            node("Mul", &["e", "half"], &["s"], vec![]),
            node("Add", &["s", "tenth"], &["s2"], vec![]),
            node(
                "Split",
                &["s2", "sizes"],
                &["a", "b"],
                vec![pb::AttributeProto { name: "axis".into(), r#type: 2, i: 1, ..Default::default() }],
            ),
            node("Conv", &["b", "w2", "b2"], &["c2"], vec![pads()]),
            node("Sub", &["c2", "a"], &["d"], vec![]),
            node("Relu", &["d"], &["r"], vec![]),
            node("Conv", &["r", "w3", "b3"], &["out"], vec![]),
        ],
        initializer: vec![
            f32_init("w1", &[6, 1, 3, 3], masked_weights(&mut seed, 6, 1, 3, true)),
            f32_init("b1", &[6], vec![0.1, -0.2, 0.3, 0.0, 0.05, -0.1]),
            f32_init("half", &[], vec![0.5]),
            f32_init("tenth", &[], vec![0.1]),
            pb::TensorProto {
                name: "sizes".into(),
                dims: vec![2],
                data_type: 7,
                int64_data: vec![4, 8],
                ..Default::default()
            },
            f32_init("w2", &[4, 8, 3, 3], masked_weights(&mut seed, 4, 8, 3, false)),
            f32_init("b2", &[4], vec![0.0, 0.1, -0.1, 0.2]),
            f32_init("w3", &[1, 4, 1, 1], vec![0.7, -0.4, 0.9, 0.3]),
            f32_init("b3", &[1], vec![-0.2]),
        ],
        input: vec![x],
        output: vec![pb::ValueInfoProto { name: "out".into(), ..Default::default() }],
        ..Default::default()
    };
    converts_as_tract_runs_it(g, "other-ops");
}

/// A zero Pad node before a Conv is read as the Conv's pads (the graph has a Pad, so the
/// gated pattern is tried first and refuses it); a pointwise op may not read it at
/// another size than the image's.
#[test]
fn a_pad_node_before_a_conv_counts_as_its_pads() {
    let mut m = load_proto(&onnx_path("pg-pixelcnn"));
    let g = graph(&mut m);
    let conv = g.node[0].clone();
    g.node[0].input[0] = "x_padded".into();
    set_ints(&mut g.node[0], "pads", &[0, 0, 0, 0]);
    g.initializer.push(pb::TensorProto {
        name: "pad_amounts".into(),
        dims: vec![8],
        data_type: 7,
        int64_data: vec![0, 0, 3, 3, 0, 0, 3, 3],
        ..Default::default()
    });
    g.node.insert(0, node("Pad", &[&conv.input[0], "pad_amounts"], &["x_padded"], vec![]));
    let dir = TempDir::new("pad-node");
    let (input, out) = (dir.path("padded.onnx"), dir.path("padded.arq"));
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    let o = OnnxConvertOptions { quant: Quant::F32, force: false, head: None, vocab: None };
    convert_onnx(&input, &out, &o).unwrap();
    let padded = ModelBytes::map(&out).unwrap();
    let (a, b) = (PixelGraph::load(padded.bytes()).unwrap(), arq_bytes("pg-pixelcnn", Quant::F32));
    let b = PixelGraph::load(b.bytes()).unwrap();
    let imgs = test_images("pg-pixelcnn");
    assert_eq!(nlls(&a, &imgs[..5]), nlls(&b, &imgs[..5]));
    // The Pad read by a Relu instead (a 14x14 map): refused, naming the gated pattern's
    // reason too.
    let mut m2 = m.clone();
    let g = graph(&mut m2);
    g.node.insert(1, node("Relu", &["x_padded"], &["x_relu"], vec![]));
    refused(
        "pad-relu",
        &m2,
        &["read as the gated PixelCNN pattern", "as a pixel graph", "Relu reads a 14x14 crop or pad"],
    );
}

/// A map shifted down a row by `Pad` + `Slice` (`F.pad` and a crop, by hand), read by a
/// pointwise op (a one-tap shift conv) and by a conv with asymmetric pads (folded into
/// its taps): arq's outputs as tract computes them, and cached generation equal to the
/// full forward.
#[test]
fn pad_and_slice_shifts_fold_into_taps() {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let mut seed = 5u64;
    let dims = [None, Some(1), Some(8), Some(8)].map(|d| Dimension {
        value: Some(d.map_or(Value::DimParam("N".into()), Value::DimValue)),
        ..Default::default()
    });
    let x = pb::ValueInfoProto {
        name: "x".into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim: dims.to_vec() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let i64s = |name: &str, v: &[i64]| pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    };
    // Any weights of a 2x3 kernel: its pads [1, 1, 0, 1] keep the size and make its taps
    // read rows r - 1 and r of the shifted map, which holds rows r - 2 and r - 1.
    let w2: Vec<f32> = masked_weights(&mut seed, 4 * 4, 1, 3, false).into_iter().take(4 * 4 * 6).collect();
    let g = pb::GraphProto {
        node: vec![
            node("Conv", &["x", "w1", "b1"], &["c1"], vec![ints("pads", &[1, 1, 1, 1])]),
            node("Pad", &["c1", "pad_top"], &["p"], vec![]),
            node("Slice", &["p", "zero", "eight", "two"], &["s"], vec![]),
            node("Conv", &["s", "w2", "b2"], &["c2"], vec![ints("pads", &[1, 1, 0, 1])]),
            node("Add", &["s", "c2"], &["a"], vec![]),
            node("Relu", &["a"], &["r"], vec![]),
            node("Conv", &["r", "w3", "b3"], &["out"], vec![]),
        ],
        initializer: vec![
            f32_init("w1", &[4, 1, 3, 3], masked_weights(&mut seed, 4, 1, 3, true)),
            f32_init("b1", &[4], vec![0.1, -0.2, 0.3, 0.05]),
            i64s("pad_top", &[0, 0, 1, 0, 0, 0, 0, 0]),
            i64s("zero", &[0]),
            i64s("eight", &[8]),
            i64s("two", &[2]),
            f32_init("w2", &[4, 4, 2, 3], w2),
            f32_init("b2", &[4], vec![0.0, 0.1, -0.1, 0.2]),
            f32_init("w3", &[1, 4, 1, 1], vec![0.7, -0.4, 0.9, 0.3]),
            f32_init("b3", &[1], vec![-0.2]),
        ],
        input: vec![x],
        output: vec![pb::ValueInfoProto { name: "out".into(), ..Default::default() }],
        ..Default::default()
    };
    converts_as_tract_runs_it(g, "shift-ops");
}

/// `g`, a one-input graph of the binarized digits with a Bernoulli head, written as an
/// opset-17 ONNX file, converted to f32 and run on 4 test digits: the full forward pass
/// within 1e-5 of tract's on the same file, and the cached path bit-identical to it.
fn converts_as_tract_runs_it(g: pb::GraphProto, name: &str) {
    let head = |k: &str, v: &str| pb::StringStringEntryProto { key: k.into(), value: v.into() };
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(g),
        metadata_props: vec![head("arq.head", "bernoulli"), head("arq.levels", "2")],
        ..Default::default()
    };
    let dir = TempDir::new(name);
    let path = dir.path("graph.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let src = GraphSource::from_onnx(&path, None).unwrap();
    println!("{}", src.describe());
    let bytes = ModelBytes::copy_of(&src.to_arq(Quant::F32).unwrap().0);
    let model = PixelGraph::load(bytes.bytes()).unwrap();
    let cfg = GraphSessionConfig::full(1);
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = GraphSession::new(&model, &mut arena, cfg).unwrap();
    for im in &test_images("pg-pixelcnn")[..4] {
        let x_in: Vec<f32> = im.iter().map(|&v| v as f32 * 2.0 - 1.0).collect();
        let want = arq_convert::import::onnx::tract_forward(&path, &x_in, 1).unwrap();
        let full = s.forward_full(im).unwrap().to_vec();
        let d = full.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-5, "{name}: max |arq - tract| = {d}");
        s.reset();
        let mut cached = Vec::new();
        for &v in im {
            cached.extend_from_slice(s.params().unwrap());
            s.push_level(v as usize).unwrap();
        }
        assert!(cached.iter().zip(&full).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: cached != full");
    }
}
