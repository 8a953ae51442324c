//! ONNX PixelCNN import: the three trained models against onnxruntime's outputs in
//! `models/pixelcnn/reference.json` and against tract, both runtime paths (cached
//! generation and the full forward), synthetic graphs of other geometries, accepted
//! graph variants, and refusals of graphs that do not fit the pattern.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arq::models::pixelcnn::heads::Head;
use arq::{PixelCnn, PixelSession, PixelSessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::onnx::{convert_onnx, tract_forward, HeadSpec, OnnxConvertOptions, PixelCnnSource};
use arq_convert::quantize::Quant;
use prost::Message;
use tract_onnx::pb;

const MODELS: [&str; 3] = ["digits17", "digits-binary", "digits-dlm"];

fn model_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pixelcnn").join(format!("{name}.onnx"))
}

struct Sample {
    /// Network input, raster order (64 values).
    input: Vec<f32>,
    /// onnxruntime's output, (P, 8, 8).
    output: Vec<f32>,
    /// The image's levels as the model sees them (binarized for the Bernoulli model).
    levels: Vec<u8>,
    nll: f64,
}

fn samples(model: &str) -> Vec<Sample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pixelcnn/reference.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        let mut out = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                x => out.push(x.as_f64().unwrap()),
            }
        }
        walk(v, &mut out);
        out
    };
    json[model]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let image = flat(&s["image"]);
            let levels =
                image.iter().map(|&x| if model == "digits-binary" { (x > 7.0) as u8 } else { x as u8 }).collect();
            Sample {
                input: flat(&s["input"]).iter().map(|&v| v as f32).collect(),
                output: flat(&s["output"]).iter().map(|&v| v as f32).collect(),
                levels,
                nll: s["nll_nats"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// Head parameters of every pixel, `(pixels, P)`, from the cached path: `params()` then
/// `push(x)` pixel by pixel.
fn run_cached(model: &PixelCnn, x: &[f32]) -> Vec<f32> {
    let cfg = PixelSessionConfig { full_forward: false };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = PixelSession::new(model, &mut arena, cfg).unwrap();
    let mut out = Vec::new();
    for &v in x {
        out.extend_from_slice(s.params().unwrap());
        s.push(v).unwrap();
    }
    out
}

fn run_full(model: &PixelCnn, x: &[f32]) -> Vec<f32> {
    let cfg = PixelSessionConfig { full_forward: true };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = PixelSession::new(model, &mut arena, cfg).unwrap();
    s.forward_full(x).unwrap().to_vec()
}

fn nll(model: &PixelCnn, levels: &[u8]) -> f64 {
    let cfg = PixelSessionConfig { full_forward: false };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = PixelSession::new(model, &mut arena, cfg).unwrap();
    s.nll(levels).unwrap()
}

/// `(pixels, P)` → `(P, pixels)`, the NCHW layout of one image.
fn to_chw(params: &[f32], p: usize) -> Vec<f32> {
    let n = params.len() / p;
    (0..p).flat_map(|c| (0..n).map(move |i| params[i * p + c])).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn arq_bytes(path: &Path, quant: Quant) -> ModelBytes {
    let src = PixelCnnSource::from_onnx(path, None).unwrap();
    ModelBytes::copy_of(&src.to_arq(quant).unwrap().0)
}

fn opts(quant: Quant) -> OnnxConvertOptions {
    OnnxConvertOptions { quant, force: false, head: None, vocab: None }
}

#[test]
fn converts_the_three_models() {
    let dir = TempDir::new("convert");
    for name in MODELS {
        let (head, levels, p) = match name {
            "digits17" => (Head::Categorical, 17, 17),
            "digits-binary" => (Head::Bernoulli, 2, 1),
            _ => (Head::LogisticMixture { k: 5, min_log_scale: -7.0 }, 17, 15),
        };
        for quant in [Quant::F32, Quant::Q8] {
            let out = dir.path(&format!("{name}.{}.arq", quant.name()));
            let summary = convert_onnx(&model_path(name), &out, &opts(quant)).unwrap();
            assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
            assert!(summary.description.contains("7 layers (7:1,3:1,3:2,3:1,3:2,3:1,3:2)"), "{}", summary.description);
            let bytes = ModelBytes::map(&out).unwrap();
            let model = PixelCnn::load(bytes.bytes()).unwrap();
            let c = model.config();
            assert_eq!((c.height, c.width, c.channels, c.out_hidden, c.n_layers), (8, 8, 32, 64, 7));
            assert_eq!(&c.kernel[..7], &[7, 3, 3, 3, 3, 3, 3]);
            assert_eq!(&c.dilation[..7], &[1, 1, 2, 1, 2, 1, 2]);
            assert_eq!((c.head, c.levels, c.n_params()), (head, levels, p));
            let f = model.file();
            assert_eq!(f.meta_str("arq.quant").unwrap(), quant.name());
            assert_eq!(f.meta_str("general.name").unwrap(), name);
            assert_eq!(f.meta_str("general.source").unwrap(), format!("{name}.onnx"));
            assert_eq!(f.meta_u64("pixelcnn.in_channels").unwrap(), 1);
            match quant {
                Quant::F32 => assert!(summary.tensor_errors.is_empty()),
                _ => {
                    // 3 + 6 x 4 layer convolutions, out1, out2.
                    assert_eq!(summary.tensor_errors.len(), 29);
                    for (t, e) in &summary.tensor_errors {
                        assert!(*e < 0.02, "{name} {t}: q8 relative error {e}");
                    }
                }
            }
        }
    }
}

/// f32: both runtime paths equal onnxruntime's outputs and tract's within 1e-4, and
/// each other bit for bit; the NLLs equal PyTorch's.
#[test]
fn f32_matches_onnxruntime_and_tract() {
    for name in MODELS {
        let path = model_path(name);
        let bytes = arq_bytes(&path, Quant::F32);
        let model = PixelCnn::load(bytes.bytes()).unwrap();
        let p = model.config().n_params();
        let samples = samples(name);
        let batch: Vec<f32> = samples.iter().flat_map(|s| s.input.iter().copied()).collect();
        let tract = tract_forward(&path, &batch, samples.len()).unwrap();
        let (mut d_ort, mut d_tract, mut d_tract_ort, mut d_nll) = (0f32, 0f32, 0f32, 0f64);
        for (i, s) in samples.iter().enumerate() {
            let cached = run_cached(&model, &s.input);
            let full = run_full(&model, &s.input);
            assert!(same_bits(&cached, &full), "{name} sample {i}: cached and full forward differ");
            let ours = to_chw(&cached, p);
            let t = &tract[i * ours.len()..(i + 1) * ours.len()];
            d_ort = d_ort.max(max_abs_diff(&ours, &s.output));
            d_tract = d_tract.max(max_abs_diff(&ours, t));
            d_tract_ort = d_tract_ort.max(max_abs_diff(t, &s.output));
            d_nll = d_nll.max((nll(&model, &s.levels) - s.nll).abs());
        }
        println!(
            "{name} f32: max |diff| vs onnxruntime {d_ort:.2e}, vs tract {d_tract:.2e} (tract vs onnxruntime \
             {d_tract_ort:.2e}), NLL vs PyTorch {d_nll:.2e} nats"
        );
        assert!(d_ort < 1e-4, "{name}: vs onnxruntime {d_ort}");
        assert!(d_tract < 1e-4, "{name}: vs tract {d_tract}");
        assert!(d_nll < 2e-3, "{name}: NLL {d_nll}");
    }
}

/// q8: both runtime paths bit-identical; the distance to the f32 reference measured.
#[test]
fn q8_paths_agree_and_stay_close() {
    for name in MODELS {
        let bytes = arq_bytes(&model_path(name), Quant::Q8);
        let model = PixelCnn::load(bytes.bytes()).unwrap();
        let p = model.config().n_params();
        let (mut d_ort, mut d_nll) = (0f32, 0f64);
        for (i, s) in samples(name).iter().enumerate() {
            let cached = run_cached(&model, &s.input);
            let full = run_full(&model, &s.input);
            assert!(same_bits(&cached, &full), "{name} sample {i}: q8 cached and full forward differ");
            d_ort = d_ort.max(max_abs_diff(&to_chw(&cached, p), &s.output));
            d_nll = d_nll.max((nll(&model, &s.levels) - s.nll).abs());
        }
        println!("{name} q8: max |diff| vs onnxruntime {d_ort:.2e}, NLL vs PyTorch {d_nll:.2e} nats");
        assert!(d_ort < 0.25, "{name}: q8 vs onnxruntime {d_ort}");
        assert!(d_nll < 0.5, "{name}: q8 NLL {d_nll}");
    }
}

// ---------------------------------------------------------------------------------------
// Graph editing

fn load_proto(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn save_proto(m: &pb::ModelProto, path: &Path) {
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
    m.graph.as_mut().unwrap()
}

/// Index of the node that reads initializer `weight` (a Conv).
fn conv_of(m: &pb::ModelProto, weight: &str) -> usize {
    m.graph.as_ref().unwrap().node.iter().position(|n| n.input.get(1).map(String::as_str) == Some(weight)).unwrap()
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
}

fn int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
}

fn set_attr(n: &mut pb::NodeProto, a: pb::AttributeProto) {
    n.attribute.retain(|x| x.name != a.name);
    n.attribute.push(a);
}

fn i64_init(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn f32_init(name: &str, dims: &[i64], v: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// digits17 rewritten in other ways the importer accepts, with the same function:
/// the layer-0 vertical gate by Split, the layer-0 down-shift as Pad then Slice, an
/// explicit Pad before layer 1's vconv, an Identity, and the unused vertical gate of
/// the last layer.
fn digits17_variant() -> pb::ModelProto {
    let mut m = load_proto(&model_path("digits17"));
    let g = graph(&mut m);
    g.initializer.push(i64_init("test_split", &[32, 32]));
    g.initializer.push(i64_init("test_down_pads", &[0, 0, 1, 0, 0, 0, 0, 0]));
    g.initializer.push(i64_init("test_rows", &[2]));
    g.initializer.push(i64_init("test_zero", &[0]));
    g.initializer.push(i64_init("test_eight", &[8]));
    g.initializer.push(i64_init("test_vpads", &[0, 0, 1, 1, 0, 0, 0, 1]));
    let mut nodes = Vec::new();
    let find = |g: &pb::GraphProto, w: &str| g.node.iter().position(|n| n.input.get(1).map(String::as_str) == Some(w));
    let v0 = find(g, "layers.0.vconv.weight").unwrap();
    let v2h0 = find(g, "layers.0.v2h.weight").unwrap();
    let v1 = find(g, "layers.1.vconv.weight").unwrap();
    let v6 = find(g, "layers.6.vconv.weight").unwrap();
    for (i, mut n) in g.node.drain(..).enumerate() {
        if i == v0 + 1 {
            // Slice lo, Tanh, Slice hi, Sigmoid -> Split, Tanh, Sigmoid.
            let a = n.input[0].clone();
            let (lo, hi) = (n.output[0].clone(), "test_hi".to_string());
            nodes.push(node("Split", "test_split", &[&a, "test_split"], &[&lo, &hi], vec![int("axis", 1)]));
            continue;
        }
        if i == v0 + 3 {
            continue; // the hi Slice
        }
        if i == v0 + 4 {
            n.input[0] = "test_hi".into();
        }
        if i == v2h0 + 1 {
            // Slice rows then Pad -> Pad then Slice rows 0..8.
            let src = n.input[0].clone();
            nodes.push(node("Pad", "test_pad_first", &[&src, "test_down_pads"], &["test_padded"], vec![]));
            n.input = ["test_padded", "test_zero", "test_eight", "test_rows"].map(String::from).to_vec();
            nodes.push(n);
            continue;
        }
        if i == v2h0 + 2 {
            // The old Pad becomes an Identity of the Slice.
            let out = n.output[0].clone();
            let src = nodes.last().unwrap().output[0].clone();
            nodes.push(node("Identity", "test_identity", &[&src], &[&out], vec![]));
            continue;
        }
        if i == v1 {
            let src = n.input[0].clone();
            nodes.push(node("Pad", "test_vpad", &[&src, "test_vpads"], &["test_vpadded"], vec![]));
            n.input[0] = "test_vpadded".into();
            set_attr(&mut n, ints("pads", &[0, 0, 0, 0]));
            nodes.push(n);
            continue;
        }
        let is_v6 = i == v6;
        let vpre = n.output.first().cloned().unwrap_or_default();
        nodes.push(n);
        if is_v6 {
            // Copy layer 0's (original) gate constants: the gate of layer 6's vconv.
            for (j, (op, ins)) in [
                ("Slice", vec![vpre.as_str(), "val_4", "val_8", "val_12", "val_12"]),
                ("Tanh", vec!["test_g6_0"]),
                ("Slice", vec![vpre.as_str(), "val_8", "val_20", "val_12", "val_12"]),
                ("Sigmoid", vec!["test_g6_2"]),
                ("Mul", vec!["test_g6_1", "test_g6_3"]),
            ]
            .into_iter()
            .enumerate()
            {
                let out = format!("test_g6_{j}");
                nodes.push(node(op, &out, &ins, &[&out], vec![]));
            }
        }
    }
    g.node = nodes;
    m
}

#[test]
fn accepts_graph_variants() {
    let dir = TempDir::new("variants");
    let orig = model_path("digits17");
    let path = dir.path("digits17.onnx");
    save_proto(&digits17_variant(), &path);
    // Same function: tract agrees on the reference images.
    let s = samples("digits17");
    let batch: Vec<f32> = s.iter().flat_map(|s| s.input.iter().copied()).collect();
    let d = max_abs_diff(&tract_forward(&orig, &batch, 3).unwrap(), &tract_forward(&path, &batch, 3).unwrap());
    assert!(d < 1e-5, "the variant computes something else: {d}");
    // Same .arq bytes (the file name is the same).
    for quant in [Quant::F32, Quant::Q8] {
        let a = PixelCnnSource::from_onnx(&orig, None).unwrap().to_arq(quant).unwrap().0;
        let b = PixelCnnSource::from_onnx(&path, None).unwrap().to_arq(quant).unwrap().0;
        assert!(a == b, "{}: the variant converts differently", quant.name());
    }
}

// ---------------------------------------------------------------------------------------
// Synthetic graphs of other geometries

struct Builder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
    rng: u64,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder { nodes: Vec::new(), inits: Vec::new(), n: 0, rng: seed }
    }
    fn uniform(&mut self, s: f32) -> f32 {
        self.rng = self.rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
    }
    fn fresh(&mut self, p: &str) -> String {
        self.n += 1;
        format!("{p}_{}", self.n)
    }
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(node(op, &format!("n_{out}"), inputs, &[&out], attrs));
        out
    }
    fn ints(&mut self, v: &[i64]) -> String {
        let name = self.fresh("c");
        self.inits.push(i64_init(&name, v));
        name
    }
    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, x: &str, co: usize, ci: usize, kh: usize, kw: usize, d: usize, pads: [i64; 4]) -> String {
        let s = 2.0 / ((ci * kh * kw) as f32).sqrt();
        let w: Vec<f32> = (0..co * ci * kh * kw).map(|_| self.uniform(s)).collect();
        let b: Vec<f32> = (0..co).map(|_| self.uniform(0.1)).collect();
        let (wn, bn) = (self.fresh("w"), self.fresh("b"));
        self.inits.push(f32_init(&wn, &[co as i64, ci as i64, kh as i64, kw as i64], w));
        self.inits.push(f32_init(&bn, &[co as i64], b));
        let attrs = vec![
            ints("kernel_shape", &[kh as i64, kw as i64]),
            ints("dilations", &[d as i64, d as i64]),
            ints("pads", &pads),
            ints("strides", &[1, 1]),
            int("group", 1),
        ];
        self.op("Conv", &[x, &wn, &bn], attrs)
    }
    fn slice(&mut self, x: &str, start: i64, end: i64, axis: i64) -> String {
        let (s, e, a, st) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]), self.ints(&[1]));
        self.op("Slice", &[x, &s, &e, &a, &st], vec![])
    }
    fn gate(&mut self, a: &str, n: usize) -> String {
        let lo = self.slice(a, 0, n as i64, 1);
        let t = self.op("Tanh", &[&lo], vec![]);
        let hi = self.slice(a, n as i64, i64::MAX, 1);
        let s = self.op("Sigmoid", &[&hi], vec![]);
        self.op("Mul", &[&t, &s], vec![])
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A random-weight gated PixelCNN in ONNX with a categorical head of `p` levels.
fn synthetic(
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    layers: &[(usize, usize)],
    p: usize,
    vgate: bool,
) -> pb::ModelProto {
    let mut b = Builder::new(h as u64 * 1000 + w as u64);
    let (mut v, mut hs) = ("x".to_string(), "x".to_string());
    for (l, &(k, d)) in layers.iter().enumerate() {
        let (m, cin) = (k / 2, if l == 0 { 1 } else { c });
        let dm = (d * m) as i64;
        let vpre = b.conv(&v, 2 * c, cin, m + 1, k, d, [dm, dm, 0, dm]);
        if l + 1 < layers.len() || vgate {
            v = b.gate(&vpre, c);
        }
        let (hin, hk) = if l == 0 { (b.slice("x", 0, (w - d) as i64, 3), m) } else { (hs.clone(), m + 1) };
        let hc = b.conv(&hin, 2 * c, cin, 1, hk, d, [0, dm, 0, 0]);
        let v2h = b.conv(&vpre, 2 * c, 2 * c, 1, 1, 1, [0; 4]);
        let cut = b.slice(&v2h, 0, h as i64 - 1, 2);
        let pads = b.ints(&[0, 0, 1, 0, 0, 0, 0, 0]);
        let shifted = b.op("Pad", &[&cut, &pads], vec![]);
        let hpre = b.op("Add", &[&hc, &shifted], vec![]);
        let g = b.gate(&hpre, c);
        hs = if l == 0 {
            g
        } else {
            let o = b.conv(&g, c, c, 1, 1, 1, [0; 4]);
            b.op("Add", &[&hs, &o], vec![])
        };
    }
    let o1 = b.conv(&hs, 2 * oh, c, 1, 1, 1, [0; 4]);
    let og = b.gate(&o1, oh);
    let out = b.conv(&og, p, oh, 1, 1, 1, [0; 4]);
    let (h, w) = (h as i64, w as i64);
    let graph = pb::GraphProto {
        name: "synthetic".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![value_info("x", &[None, Some(1), Some(h), Some(w)])],
        output: vec![value_info(&out, &[None, Some(p as i64), Some(h), Some(w)])],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        metadata_props: vec![
            pb::StringStringEntryProto { key: "arq.head".into(), value: "categorical".into() },
            pb::StringStringEntryProto { key: "arq.levels".into(), value: p.to_string() },
        ],
        ..Default::default()
    }
}

/// Other image sizes, kernels, dilations (layer 0's too), layer counts, with and
/// without the last vertical gate: the runtime equals tract.
#[test]
fn synthetic_geometries_match_tract() {
    let dir = TempDir::new("synth");
    type Case = (usize, usize, usize, usize, &'static [(usize, usize)], usize, bool);
    let cases: [Case; 4] = [
        (6, 9, 32, 32, &[(5, 2), (3, 1), (5, 3)], 4, true),
        (5, 5, 32, 64, &[(3, 1)], 3, false),
        (3, 4, 64, 32, &[(7, 1), (3, 4), (9, 1)], 5, false),
        (7, 3, 32, 32, &[(3, 2), (11, 1)], 2, true),
    ];
    for (i, &(h, w, c, oh, layers, p, vgate)) in cases.iter().enumerate() {
        let path = dir.path(&format!("synth{i}.onnx"));
        save_proto(&synthetic(h, w, c, oh, layers, p, vgate), &path);
        let src = PixelCnnSource::from_onnx(&path, None).unwrap();
        let want: Vec<(usize, usize)> = layers.to_vec();
        let got: Vec<(usize, usize)> = src.layers.iter().map(|l| (l.kernel, l.dilation)).collect();
        assert_eq!((src.height, src.width, src.channels, src.out_hidden, got), (h, w, c, oh, want));
        let bytes = ModelBytes::copy_of(&src.to_arq(Quant::F32).unwrap().0);
        let model = PixelCnn::load(bytes.bytes()).unwrap();
        let mut rng = 12345u64 + i as u64;
        let x: Vec<f32> = (0..2 * h * w)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        let tract = tract_forward(&path, &x, 2).unwrap();
        let mut worst = 0f32;
        for img in 0..2 {
            let xi = &x[img * h * w..(img + 1) * h * w];
            let cached = run_cached(&model, xi);
            assert!(same_bits(&cached, &run_full(&model, xi)), "case {i}: cached and full forward differ");
            let ours = to_chw(&cached, p);
            worst = worst.max(max_abs_diff(&ours, &tract[img * p * h * w..(img + 1) * p * h * w]));
        }
        let scale = tract.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!(
            "synthetic case {i} ({h}x{w}, layers {layers:?}): max |diff| vs tract {worst:.2e} (max |out| {scale:.2})"
        );
        assert!(scale > 0.3, "case {i}: outputs too small to compare ({scale})");
        assert!(worst < 1e-4, "case {i}: vs tract {worst}");
    }
}

// ---------------------------------------------------------------------------------------
// Refusals

/// Converting `m` fails with one line containing every `want`; no output is left and
/// the input is unchanged.
fn refused(tag: &str, m: &pb::ModelProto, head: Option<HeadSpec>, want: &[&str]) {
    let dir = TempDir::new(tag);
    let input = dir.path("model.onnx");
    save_proto(m, &input);
    refused_file(&dir, &input, head, want);
}

fn refused_file(dir: &TempDir, input: &Path, head: Option<HeadSpec>, want: &[&str]) {
    let before = std::fs::read(input).unwrap();
    let listing = dir.listing();
    let out = dir.path("out.arq");
    let o = OnnxConvertOptions { quant: Quant::Q8, force: false, head, vocab: None };
    let err = format!("{:#}", convert_onnx(input, &out, &o).expect_err("conversion should fail"));
    println!("refused: {err}");
    assert!(!err.contains('\n'), "not one line: {err}");
    for w in want {
        assert!(err.contains(w), "'{err}' does not contain '{w}'");
    }
    assert!(!out.exists(), "output left behind");
    assert_eq!(dir.listing(), listing, "files left behind");
    assert_eq!(std::fs::read(input).unwrap(), before, "input modified");
}

fn edited(f: impl FnOnce(&mut pb::ModelProto)) -> pb::ModelProto {
    let mut m = load_proto(&model_path("digits17"));
    f(&mut m);
    m
}

#[test]
fn refuses_unsupported_operators() {
    let m = edited(|m| graph(m).node[2].op_type = "Relu".into());
    refused("relu", &m, None, &["node 2 (Relu \"node_tanh\")", "unsupported operator Relu", "expected Tanh"]);
    let m = edited(|m| {
        let n = &mut graph(m).node[2];
        n.op_type = "Sigmoid".into();
    });
    refused("sigmoid", &m, None, &["node 2 (Sigmoid", "expected Sigmoid of a gate's second channel half"]);
    let m = edited(|m| {
        let g = graph(m);
        let tanh = g.node[2].output[0].clone();
        g.node[5].input = vec![tanh.clone(), tanh];
    });
    refused("mul", &m, None, &["node 5 (Mul", "expected a gate's Mul of Tanh and Sigmoid"]);
    let m = edited(|m| graph(m).node[4].domain = "com.microsoft".into());
    refused("domain", &m, None, &["node 4", "domain 'com.microsoft'"]);
}

#[test]
fn refuses_non_causal_convolutions() {
    let m = edited(|m| {
        let i = conv_of(m, "layers.2.vconv.weight");
        set_attr(&mut graph(m).node[i], ints("pads", &[1, 1, 1, 1]));
    });
    refused(
        "vpads",
        &m,
        None,
        &["(Conv \"node_conv2d_7\")", "layer 2 vconv: pads [1, 1, 1, 1] are not causal", "[2, 2, 0, 2]"],
    );
    let m = edited(|m| {
        let i = conv_of(m, "layers.3.hconv.weight");
        set_attr(&mut graph(m).node[i], ints("pads", &[0, 0, 0, 1]));
    });
    refused("hpads", &m, None, &["layer 3 hconv: pads [0, 0, 0, 1] are not causal"]);
    let m = edited(|m| {
        let i = conv_of(m, "layers.0.hconv.weight");
        let g = graph(m);
        g.node[i].input[0] = "x".into(); // no column sliced off: sees the pixel itself
        set_attr(&mut g.node[i], ints("pads", &[0, 2, 0, 0]));
    });
    refused("mask-a", &m, None, &["layer 0 hconv: pads [0, 2, 0, 0] are not causal"]);
    let m = edited(|m| {
        let i = conv_of(m, "layers.2.hconv.weight");
        let n = &mut graph(m).node[i];
        set_attr(n, ints("dilations", &[1, 1]));
        set_attr(n, ints("pads", &[0, 1, 0, 0]));
    });
    refused("dil", &m, None, &["layer 2 hconv", "dilation 1 does not match the layer's vconv (k = 3, dilation 2)"]);
    let m = edited(|m| {
        let i = conv_of(m, "layers.1.v2h.weight");
        set_attr(&mut graph(m).node[i], ints("strides", &[2, 2]));
    });
    refused("stride", &m, None, &["strides [2, 2]"]);
    let m = edited(|m| {
        let i = conv_of(m, "out1.weight");
        set_attr(&mut graph(m).node[i], int("group", 2));
    });
    refused("group", &m, None, &["group 2"]);
    // The down-shift removed: v2h added in place.
    let m = edited(|m| {
        let g = graph(m);
        let i = g.node.iter().position(|n| n.input.get(1).map(String::as_str) == Some("layers.1.v2h.weight")).unwrap();
        let v2h = g.node[i].output[0].clone();
        let add = g.node.iter().position(|n| n.op_type == "Add" && n.input[1] == g.node[i + 2].output[0]).unwrap();
        g.node[add].input[1] = v2h;
    });
    refused("shift", &m, None, &["layer 1: the v2h output is not shifted down"]);
    // Shifted up instead of down.
    let m = edited(|m| {
        let g = graph(m);
        g.initializer.push(i64_init("test_up", &[0, 0, 0, 0, 0, 0, 1, 0]));
        g.initializer.push(i64_init("test_one", &[1]));
        g.initializer.push(i64_init("test_big", &[i64::MAX]));
        let i = g.node.iter().position(|n| n.input.get(1).map(String::as_str) == Some("layers.1.v2h.weight")).unwrap();
        g.node[i + 1].input[1] = "test_one".into();
        g.node[i + 1].input[2] = "test_big".into();
        g.node[i + 2].input[1] = "test_up".into();
    });
    refused("shift-up", &m, None, &["layer 1: the v2h output is moved to rows 1..9"]);
}

#[test]
fn refuses_wrong_structure() {
    // The output block dropped: the graph ends at the last horizontal stack.
    let m = edited(|m| {
        let g = graph(m);
        let keep = g.node.len() - 7;
        g.node.truncate(keep);
        g.output[0].name = g.node[keep - 1].output[0].clone();
    });
    refused("no-out", &m, None, &["is layer 6's horizontal stack", "expected out2 of the output block"]);
    // C = 16.
    let m = edited(|m| {
        let g = graph(m);
        let t = g.initializer.iter_mut().find(|t| t.name == "layers.0.vconv.weight").unwrap();
        t.dims[0] = 32;
        t.raw_data.truncate(32 * 28 * 4);
        let b = g.initializer.iter_mut().find(|t| t.name == "layers.0.vconv.bias").unwrap();
        b.dims[0] = 32;
        b.raw_data.truncate(32 * 4);
    });
    refused("c16", &m, None, &["node 0 (Conv", "C = 16", "multiple of 32"]);
    // A gate split at the wrong channel.
    let m = edited(|m| {
        let g = graph(m);
        g.initializer.push(i64_init("test_16", &[16]));
        g.node[1].input[2] = "test_16".into();
    });
    refused("half", &m, None, &["node 1 (Slice", "channels 0..16 of layer 0's vconv output (64 channels)"]);
    // Nodes out of order.
    let m = edited(|m| {
        let g = graph(m);
        let n = g.node.remove(17);
        g.node.insert(3, n);
    });
    refused("order", &m, None, &["node 3 (Conv", "is not computed by an earlier node"]);
    // Three input channels.
    let m = edited(|m| graph(m).input[0] = value_info("x", &[None, Some(3), Some(8), Some(8)]));
    refused("rgb", &m, None, &["only one input channel"]);
    // A Pad that is not zeros.
    let m = edited(|m| {
        let g = graph(m);
        let i = g.node.iter().position(|n| n.op_type == "Pad").unwrap();
        let mode = pb::AttributeProto { name: "mode".into(), r#type: 3, s: b"reflect".to_vec(), ..Default::default() };
        set_attr(&mut g.node[i], mode);
    });
    refused("reflect", &m, None, &["(Pad", "Pad mode reflect"]);
}

#[test]
fn heads_from_metadata_or_override() {
    // No metadata: refused unless --head is given.
    let bare = |name: &str| {
        let mut m = load_proto(&model_path(name));
        m.metadata_props.clear();
        m
    };
    refused("nohead", &bare("digits-dlm"), None, &["no arq.head metadata", "--head"]);
    let lm: HeadSpec = "logistic_mixture:5".parse().unwrap();
    refused("nolevels", &bare("digits-dlm"), Some(lm), &["--levels"]);
    let dir = TempDir::new("override");
    let input = dir.path("digits-dlm.onnx");
    save_proto(&bare("digits-dlm"), &input);
    let out = dir.path("dlm.arq");
    let spec = HeadSpec { levels: Some(17), ..lm };
    convert_onnx(&input, &out, &OnnxConvertOptions { quant: Quant::F32, force: false, head: Some(spec), vocab: None })
        .unwrap();
    let want = arq_bytes(&model_path("digits-dlm"), Quant::F32);
    assert!(std::fs::read(&out).unwrap() == want.bytes(), "override gives other bytes than the metadata");
    // A categorical override of the same 15 channels is accepted (the graph cannot tell).
    let cat = PixelCnnSource::from_onnx(&input, Some("categorical".parse().unwrap())).unwrap();
    assert_eq!((cat.head, cat.levels), (Head::Categorical, 15));
    // Heads that do not fit out2.
    refused("bern", &load_proto(&model_path("digits17")), Some("bernoulli".parse().unwrap()), &["out2 has 17"]);
    refused(
        "mix4",
        &load_proto(&model_path("digits-dlm")),
        Some("logistic_mixture:4".parse().unwrap()),
        &["K = 4", "3K = 12"],
    );
    let spec = HeadSpec { levels: Some(16), ..HeadSpec::from_str("categorical").unwrap() };
    refused("catlev", &load_proto(&model_path("digits17")), Some(spec), &["16 levels", "17 output channels"]);
}

#[test]
fn refuses_files_that_are_not_onnx() {
    let dir = TempDir::new("notonnx");
    let text = dir.path("notes.onnx");
    std::fs::write(&text, "this is a text file, not a model\n").unwrap();
    refused_file(&dir, &text, None, &["not an ONNX model"]);
    let empty = dir.path("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    refused_file(&dir, &empty, None, &["not an ONNX model (empty file)"]);
    let png = dir.path("image.onnx");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x08\0\0\0\x08\x08\0\0\0\0").unwrap();
    refused_file(&dir, &png, None, &["not an ONNX model"]);
    let cut = dir.path("cut.onnx");
    std::fs::write(&cut, &std::fs::read(model_path("digits17")).unwrap()[..5000]).unwrap();
    refused_file(&dir, &cut, None, &["not an ONNX model"]);
    let err = convert_onnx(&dir.path("missing.onnx"), &dir.path("o.arq"), &opts(Quant::F32)).err().unwrap();
    assert!(err.to_string().contains("no such file"), "{err}");
}

#[test]
fn output_rules() {
    let dir = TempDir::new("rules");
    let input = model_path("digits-binary");
    let out = dir.path("b.arq");
    std::fs::write(&out, b"old").unwrap();
    let err = convert_onnx(&input, &out, &opts(Quant::Q8)).err().unwrap().to_string();
    assert!(err.contains("already exists (use --force to overwrite)"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let force = OnnxConvertOptions { force: true, ..opts(Quant::Q8) };
    convert_onnx(&input, &out, &force).unwrap();
    assert!(PixelCnn::load(ModelBytes::map(&out).unwrap().bytes()).is_ok());
    assert_eq!(dir.listing(), ["b.arq"]);
    // The input as output.
    let copy = dir.path("m.onnx");
    std::fs::copy(&input, &copy).unwrap();
    let err = convert_onnx(&copy, &copy, &force).err().unwrap().to_string();
    assert!(err.contains("is the input file"), "{err}");
    // q4 is refused.
    let err = convert_onnx(&input, &dir.path("q4.arq"), &opts(Quant::Q4)).err().unwrap().to_string();
    assert!(err.contains("q4 is for text models"), "{err}");
    assert_eq!(dir.listing(), ["b.arq", "m.onnx"]);
}
