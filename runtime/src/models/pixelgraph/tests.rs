//! Random graphs of the two shapes users bring (a mask-A/mask-B residual network; a
//! vertical/horizontal stack network whose vertical stack reads the row above to the
//! right), at odd widths and channel counts: cached generation against the full
//! forward bit for bit, causality by perturbation, the exact arena, and refusals.

use std::vec::Vec;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg32;

use super::writer::{ConvSpec, GraphSpec, NodeSpec};
use super::*;
use crate::aligned::AlignedBytes;
use crate::models::pixelcnn::heads::Head;

struct Builder {
    nodes: Vec<NodeSpec>,
    channels: Vec<usize>,
    rng: Pcg32,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder { nodes: Vec::new(), channels: vec![1], rng: Pcg32::seed_from_u64(seed) }
    }

    fn push(&mut self, op: Op, a: usize, b: usize, channels: usize, conv: Option<ConvSpec>) -> usize {
        self.nodes.push(NodeSpec { op, a, b, channels, conv });
        self.channels.push(channels);
        self.channels.len() - 1
    }

    fn conv(&mut self, a: usize, cout: usize, taps: &[(i16, i16)]) -> usize {
        let cin = self.channels[a];
        let scale = 1.0 / ((taps.len() * cin) as f32).sqrt();
        let mut r = || (self.rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale;
        let weight = (0..cout * taps.len() * cin).map(|_| r()).collect();
        let bias = (0..cout).map(|_| r()).collect();
        self.push(Op::Conv, a, a, cout, Some(ConvSpec { taps: taps.to_vec(), cin, weight, bias }))
    }

    fn unary(&mut self, op: Op, a: usize) -> usize {
        let c = self.channels[a];
        self.push(op, a, a, c, None)
    }

    fn binary(&mut self, op: Op, a: usize, b: usize) -> usize {
        let c = self.channels[a];
        self.push(op, a, b, c, None)
    }

    fn slice(&mut self, a: usize, start: usize, len: usize) -> usize {
        self.push(Op::Slice { start }, a, a, len, None)
    }

    fn spec(self, height: usize, width: usize, head: Head, levels: usize) -> GraphSpec {
        GraphSpec {
            name: "test".into(),
            source: "test".into(),
            height,
            width,
            head,
            levels,
            input_map: (0..levels).map(|l| l as f32 / (levels - 1) as f32 * 2.0 - 1.0).collect(),
            nodes: self.nodes,
        }
    }
}

/// Taps of a `k x k` kernel under a PixelCNN mask (A: the centre excluded).
fn masked(k: i16, dil: i16, mask_a: bool) -> Vec<(i16, i16)> {
    let m = k / 2;
    let mut taps = Vec::new();
    for i in -m..=0 {
        for j in -m..=m {
            if i < 0 || j < 0 || (j == 0 && !mask_a) {
                taps.push((i * dil, j * dil));
            }
        }
    }
    taps
}

/// pytorch-generative's PixelCNN shape: mask-A 7x7, ReLU residual blocks with a mask-B
/// 3x3, a ReLU / 1x1 / ReLU / 1x1 head; 13 channels (not a multiple of 32).
fn residual_net(h: usize, w: usize, seed: u64) -> GraphSpec {
    let mut g = Builder::new(seed);
    let mut x = g.conv(0, 13, &masked(7, 1, true));
    for _ in 0..2 {
        let r = g.unary(Op::Relu, x);
        let d = g.conv(r, 7, &[(0, 0)]);
        let d = g.unary(Op::Relu, d);
        let d = g.conv(d, 7, &masked(3, 1, false));
        let d = g.unary(Op::Elu { alpha: 1.0 }, d);
        let u = g.conv(d, 13, &[(0, 0)]);
        x = g.binary(Op::Add, x, u);
    }
    let o = g.unary(Op::Relu, x);
    let o = g.conv(o, 9, &[(0, 0)]);
    let o = g.push(Op::ConcatElu, o, o, 18, None);
    g.conv(o, 5, &[(0, 0)]);
    g.spec(h, w, Head::Categorical, 5)
}

/// Tutorial 12's shape: a vertical stack that sees rows above only (its later layers
/// read the row above up to the right and their own row, left and right), a horizontal
/// stack, gates by channel slices, dilations.
fn stack_net(h: usize, w: usize, seed: u64) -> GraphSpec {
    let mut g = Builder::new(seed);
    let c = 6;
    let vfirst: Vec<(i16, i16)> = (-1..=1).map(|j| (-1, j)).collect();
    let mut v = g.conv(0, c, &vfirst);
    let mut hs = g.conv(0, c, &[(0, -1)]);
    for dil in [1i16, 2, 1] {
        let vt: Vec<(i16, i16)> = (-1..=0).flat_map(|i| (-1..=1).map(move |j| (i * dil, j * dil))).collect();
        let vf = g.conv(v, 2 * c, &vt);
        let (a, b) = (g.slice(vf, 0, c), g.slice(vf, c, c));
        let (a, b) = (g.unary(Op::Tanh, a), g.unary(Op::Sigmoid, b));
        let v_out = g.binary(Op::Mul, a, b);
        let hf = g.conv(hs, 2 * c, &[(0, -dil), (0, 0)]);
        let v2h = g.conv(vf, 2 * c, &[(0, 0)]);
        let hf = g.binary(Op::Add, hf, v2h);
        let (a, b) = (g.slice(hf, 0, c), g.slice(hf, c, c));
        let (a, b) = (g.unary(Op::Tanh, a), g.unary(Op::Sigmoid, b));
        let gated = g.binary(Op::Mul, a, b);
        let o = g.conv(gated, c, &[(0, 0)]);
        hs = g.binary(Op::Add, o, hs);
        v = v_out;
    }
    let o = g.unary(Op::Elu { alpha: 1.0 }, hs);
    g.conv(o, 1, &[(0, 0)]);
    g.spec(h, w, Head::Bernoulli, 2)
}

/// pytorch-generative's GatedPixelCNN shape: a vertical stack that sees its whole row (a
/// 1x3 conv and a 1x1 conv of the image: completed-row tensors), read by the rows below
/// only, through a conv shifted down a row; a horizontal stack; skips summed into the head.
fn gated_net(h: usize, w: usize, seed: u64) -> GraphSpec {
    let mut g = Builder::new(seed);
    let c = 4;
    let gate = |g: &mut Builder, t: usize| {
        let (a, b) = (g.slice(t, 0, c), g.slice(t, c, c));
        let (a, b) = (g.unary(Op::Tanh, a), g.unary(Op::Sigmoid, b));
        g.binary(Op::Mul, a, b)
    };
    let (mut v, mut hs, mut skips) = (0, 0, None);
    for (layer, vdy) in [(0usize, [-2i16, -1]), (1, [-1, -1])] {
        let row = g.conv(v, c, &[(0, -1), (0, 0), (0, 1)]);
        let shifted: Vec<(i16, i16)> = vdy.iter().map(|&dy| (dy, 0)).collect();
        let vn = g.conv(row, 2 * c, &shifted[..1 + usize::from(vdy[0] != vdy[1])]);
        let link = g.conv(vn, 2 * c, &[(0, 0)]);
        let own = g.conv(v, 2 * c, &[(0, 0)]);
        let vsum = g.binary(Op::Add, vn, own);
        let hconv =
            if layer == 0 { g.conv(0, 2 * c, &[(0, -2), (0, -1)]) } else { g.conv(hs, 2 * c, &[(0, -1), (0, 0)]) };
        let hsum = g.binary(Op::Add, link, hconv);
        let hg = gate(&mut g, hsum);
        let skip = g.conv(hg, c, &[(0, 0)]);
        skips = Some(skips.map_or(skip, |s| g.binary(Op::Add, s, skip)));
        hs = g.conv(hg, c, &[(0, 0)]);
        v = gate(&mut g, vsum);
    }
    let r = g.unary(Op::Relu, skips.unwrap_or(hs));
    g.conv(r, 1, &[(0, 0)]);
    g.spec(h, w, Head::Bernoulli, 2)
}

fn load(spec: &GraphSpec, q8: bool) -> AlignedBytes {
    AlignedBytes::copy_of(&spec.to_arq(q8).unwrap().0)
}

fn image(levels: usize, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Pcg32::seed_from_u64(seed);
    (0..n).map(|_| (rng.next_u32() as usize % levels) as u8).collect()
}

fn cached_params(s: &mut GraphSession<'_>, x: &[u8]) -> Vec<f32> {
    s.reset();
    let mut all = Vec::new();
    for &v in x {
        all.extend_from_slice(s.params().unwrap());
        s.push_level(v as usize).unwrap();
    }
    all
}

fn specs() -> Vec<GraphSpec> {
    vec![
        residual_net(8, 8, 1),
        residual_net(5, 7, 2),
        residual_net(4, 9, 3),
        stack_net(8, 8, 4),
        stack_net(6, 5, 5),
        gated_net(8, 8, 6),
        gated_net(5, 7, 7),
    ]
}

#[test]
fn cached_generation_equals_the_full_forward_pass_bit_for_bit() {
    for spec in specs() {
        for q8 in [false, true] {
            let file = load(&spec, q8);
            let model = PixelGraph::load(file.bytes()).unwrap();
            let cfg = GraphSessionConfig::full(1);
            let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
            let mut s = GraphSession::new(&model, &mut arena, cfg).unwrap();
            let c = *model.config();
            for seed in 0..3 {
                let x = image(c.levels, c.pixels(), seed);
                let cached = cached_params(&mut s, &x);
                let full = s.forward_full(&x).unwrap().to_vec();
                assert_eq!(cached.len(), full.len());
                for (i, (a, b)) in cached.iter().zip(&full).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{}x{} q8={q8} seed {seed} value {i}", c.height, c.width);
                }
            }
        }
    }
}

/// A batch of images through one full forward pass: each image's parameters and NLL are
/// bit-identical to its own pass and to the cached path, also in a short last batch.
#[test]
fn batched_scoring_equals_one_image_at_a_time_bit_for_bit() {
    for spec in specs() {
        for q8 in [false, true] {
            let file = load(&spec, q8);
            let model = PixelGraph::load(file.bytes()).unwrap();
            let c = *model.config();
            let one = GraphSessionConfig::full(1);
            let mut arena1 = vec![0u8; model.memory_plan(&one).unwrap()];
            let mut s1 = GraphSession::new(&model, &mut arena1, one).unwrap();
            let three = GraphSessionConfig::full(3);
            let mut arena3 = vec![0u8; model.memory_plan(&three).unwrap()];
            let mut s3 = GraphSession::new(&model, &mut arena3, three).unwrap();
            let images: Vec<u8> = (0..3).flat_map(|seed| image(c.levels, c.pixels(), 40 + seed)).collect();
            for n in [3, 2] {
                let batch = &images[..n * c.pixels()];
                let params = s3.forward_batch(batch).unwrap().to_vec();
                let mut nll = vec![0.0; n];
                s3.nll_batch(batch, &mut nll).unwrap();
                for (i, im) in batch.chunks_exact(c.pixels()).enumerate() {
                    let alone = s1.forward_full(im).unwrap();
                    let got = &params[i * alone.len()..(i + 1) * alone.len()];
                    assert!(alone.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()), "image {i} of {n}");
                    assert_eq!(
                        nll[i].to_bits(),
                        s1.nll(im).unwrap().to_bits(),
                        "{}x{} q8={q8} image {i}",
                        c.height,
                        c.width
                    );
                }
            }
            assert!(s3.forward_batch(&[0; 1]).is_err(), "a part of an image");
            assert!(s1.forward_batch(&images[..2 * c.pixels()]).is_err(), "more images than the batch");
            assert!(s3.nll_batch(&images, &mut [0.0; 2]).is_err(), "one NLL per image");
        }
    }
}

/// Pixel i's output must not change when any pixel at or after i changes, and the
/// next pixel and the one below must see a change.
#[test]
fn outputs_depend_on_exactly_the_earlier_pixels() {
    for spec in [residual_net(6, 6, 7), stack_net(6, 6, 8), gated_net(6, 6, 9)] {
        let file = load(&spec, false);
        let model = PixelGraph::load(file.bytes()).unwrap();
        let cfg = GraphSessionConfig::full(1);
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = GraphSession::new(&model, &mut arena, cfg).unwrap();
        let (p, levels) = (model.config().n_params(), model.config().levels);
        let x = image(levels, 36, 9);
        let base = s.forward_full(&x).unwrap().to_vec();
        for j in 0..36 {
            let mut y = x.clone();
            y[j] = ((y[j] as usize + 1) % levels) as u8;
            let out = s.forward_full(&y).unwrap().to_vec();
            for i in 0..=j {
                assert_eq!(out[i * p..(i + 1) * p], base[i * p..(i + 1) * p], "pixel {i} depends on pixel {j}");
            }
            for i in [j + 1, j + 6] {
                if i < 36 && (i != j + 1 || (j + 1) % 6 != 0) {
                    assert_ne!(out[i * p..(i + 1) * p], base[i * p..(i + 1) * p], "pixel {i} blind to {j}");
                }
            }
        }
    }
}

#[test]
fn memory_plan_is_exact_and_a_short_arena_is_refused() {
    let file = load(&stack_net(8, 8, 1), true);
    let model = PixelGraph::load(file.bytes()).unwrap();
    for full_forward in [false, true] {
        let cfg = GraphSessionConfig { full_forward, batch: 1 };
        let need = model.memory_plan(&cfg).unwrap();
        let mut arena = vec![0u8; need];
        assert!(GraphSession::new(&model, &mut arena, cfg).is_ok());
        let mut short = vec![0u8; need - 1];
        assert!(matches!(GraphSession::new(&model, &mut short, cfg), Err(Error::ArenaTooSmall { .. })));
    }
}

#[test]
fn nll_sums_the_conditionals_and_sampling_is_reproducible() {
    let file = load(&residual_net(4, 5, 3), true);
    let model = PixelGraph::load(file.bytes()).unwrap();
    let mut arena = vec![0u8; model.memory_plan(&GraphSessionConfig::default()).unwrap()];
    let mut s = GraphSession::new(&model, &mut arena, GraphSessionConfig::default()).unwrap();
    let (mut a, mut b) = (vec![0u8; 20], vec![0u8; 20]);
    s.sample(&mut a, 0, 1.0, &mut Pcg32::seed_from_u64(9)).unwrap();
    s.sample(&mut b, 0, 1.0, &mut Pcg32::seed_from_u64(9)).unwrap();
    assert_eq!(a, b);
    let mut want = 0.0;
    s.reset();
    for &v in &a {
        let lp = s.log_probs().unwrap();
        assert!((lp.iter().map(|v| v.exp()).sum::<f64>() - 1.0).abs() < 1e-9);
        want -= lp[v as usize];
        s.push_level(v as usize).unwrap();
    }
    assert_eq!(s.nll(&a).unwrap(), want);
    assert!(s.params().is_err(), "a complete image has no next pixel");
    assert!(s.nll(&[0; 19]).is_err());
    assert!(s.nll(&[5; 20]).is_err());
}

#[test]
fn every_kernel_tier_gives_the_same_params() {
    let file = load(&residual_net(5, 6, 4), true);
    let mut model = PixelGraph::load(file.bytes()).unwrap();
    let x = image(5, 30, 3);
    let mut results = Vec::new();
    for k in crate::kernels::available() {
        model.set_kernels(k);
        let mut arena = vec![0u8; model.memory_plan(&GraphSessionConfig::default()).unwrap()];
        let mut s = GraphSession::new(&model, &mut arena, GraphSessionConfig::default()).unwrap();
        results.push(cached_params(&mut s, &x));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

/// The loader's own causality check: a file whose graph reads the current pixel of the
/// image, or a row below, is refused (the converter names the node; a hostile file
/// still cannot load).
#[test]
fn leaking_taps_are_refused_at_load() {
    for taps in [masked(3, 1, false), vec![(1, 0)], vec![(0, 1)], vec![(-9, 0)]] {
        let mut g = Builder::new(1);
        g.conv(0, 1, &taps);
        let file = load(&g.spec(8, 8, Head::Bernoulli, 2), false);
        assert!(matches!(PixelGraph::load(file.bytes()), Err(Error::BadHyperparameter(_))), "{taps:?}");
    }
    // A completed-row tensor (it sees its whole row) read on its own row by the output.
    let mut g = Builder::new(1);
    let row = g.conv(0, 3, &[(-1, 0), (0, 1)]);
    let shifted = g.conv(row, 3, &[(-1, 0)]);
    let add = g.binary(Op::Add, shifted, row);
    g.conv(add, 1, &[(0, 0)]);
    let file = load(&g.spec(8, 8, Head::Bernoulli, 2), false);
    assert!(PixelGraph::load(file.bytes()).is_err());
    // A pixel tensor read ahead on its own row.
    let mut g = Builder::new(1);
    let h = g.conv(0, 3, &[(0, -1)]);
    g.conv(h, 1, &[(0, 1)]);
    let file = load(&g.spec(8, 8, Head::Bernoulli, 2), false);
    assert!(PixelGraph::load(file.bytes()).is_err());
}

/// Every single-byte change of the node records and tap tables either is refused at
/// load or gives a model whose sessions run without panicking (hostile files).
#[test]
fn corrupted_graphs_are_refused_or_run_without_panicking() {
    let bytes = stack_net(4, 5, 3).to_arq(false).unwrap().0;
    let aligned = AlignedBytes::copy_of(&bytes);
    let base = aligned.bytes().as_ptr() as usize;
    let file = crate::format::ArqFile::parse(aligned.bytes()).unwrap();
    let spans: Vec<(usize, usize)> = file
        .tensors()
        .filter(|t| t.name == "graph.nodes" || t.name.ends_with(".taps"))
        .map(|t| (t.data.as_ptr() as usize - base, t.data.len()))
        .collect();
    let (mut refused, mut ran) = (0, 0);
    for &(start, len) in &spans {
        for i in 0..len {
            for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                let at = start + i;
                if b[at] == v {
                    continue;
                }
                b[at] = v;
                let copy = AlignedBytes::copy_of(&b);
                // The checksum covers the data; corruption is caught structurally here.
                let Ok(model) = PixelGraph::load(copy.bytes()) else {
                    refused += 1;
                    continue;
                };
                let cfg = GraphSessionConfig::full(1);
                let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
                let mut s = GraphSession::new(&model, &mut arena, cfg).unwrap();
                let x = image(2, 20, 1);
                let _ = s.nll(&x);
                let _ = s.forward_full(&x);
                ran += 1;
            }
        }
    }
    assert!(refused > 0 && ran > 0, "refused {refused}, ran {ran}");
}
