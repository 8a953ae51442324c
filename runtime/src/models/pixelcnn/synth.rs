//! Random-weight PixelCNN files of any geometry (std only): for tests of the cached
//! generator against the full forward pass, and for benchmarks at image sizes no
//! trained model here has (the 28x28 "synthetic" model). Load one from an
//! [`AlignedBytes`](crate::aligned::AlignedBytes) copy.

use crate::format::keys;
use crate::format::writer::{ArqWriter, Meta};
use crate::format::Dtype;
use crate::quant::{quantize_row_q8, BlockQ8, QK8};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg32;
use std::vec::Vec;

/// The geometry of a synthetic gated PixelCNN (categorical head).
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub out_hidden: usize,
    /// `(kernel, dilation)` per gated layer; the first is the mask-A layer.
    pub layers: Vec<(usize, usize)>,
    pub levels: usize,
    pub q8: bool,
    pub seed: u64,
}

impl SynthSpec {
    /// The digits models' shape (32 channels, 7 layers, kernel 7 then 3 with dilations
    /// 1, 2 alternating, 17 levels) at another image size.
    pub fn digits_like(height: usize, width: usize, q8: bool) -> Self {
        SynthSpec {
            height,
            width,
            channels: 32,
            out_hidden: 64,
            layers: vec![(7, 1), (3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 2)],
            levels: 17,
            q8,
            seed: 1,
        }
    }
}

/// Writes a random-weight `.arq` file of the given geometry. Weights are uniform in
/// `±1/sqrt(fan_in)`, biases in `±0.1`; padding columns are zero, as the converter
/// writes them.
pub fn synthetic(spec: &SynthSpec) -> Vec<u8> {
    let mut rng = Pcg32::seed_from_u64(spec.seed);
    let mut uniform = move |s: f32| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * s;
    let mut w = ArqWriter::new();
    let (c, oh) = (spec.channels, spec.out_hidden);
    let layers: Vec<String> = spec.layers.iter().map(|(k, d)| format!("{k}:{d}")).collect();
    for (key, v) in [
        (keys::ARCHITECTURE, Meta::Str(keys::ARCH_PIXELCNN.into())),
        (keys::QUANT, Meta::Str(if spec.q8 { Dtype::Q8 } else { Dtype::F32 }.name().into())),
        (keys::GENERAL_NAME, Meta::Str("synthetic".into())),
        (keys::PIXELCNN_HEIGHT, Meta::U32(spec.height as u32)),
        (keys::PIXELCNN_WIDTH, Meta::U32(spec.width as u32)),
        (keys::PIXELCNN_IN_CHANNELS, Meta::U32(1)),
        (keys::PIXELCNN_CHANNELS, Meta::U32(c as u32)),
        (keys::PIXELCNN_OUT_HIDDEN, Meta::U32(oh as u32)),
        (keys::PIXELCNN_LAYERS, Meta::Str(layers.join(","))),
        (keys::PIXELCNN_HEAD, Meta::Str(keys::HEAD_CATEGORICAL.into())),
        (keys::PIXELCNN_LEVELS, Meta::U32(spec.levels as u32)),
    ] {
        w.meta(key, v);
    }
    let mut conv = |w: &mut ArqWriter, name: &str, rows: usize, used: usize| {
        let cols = used.div_ceil(QK8) * QK8;
        let s = 1.0 / (used as f32).sqrt();
        let mut m = vec![0.0f32; rows * cols];
        for row in m.chunks_exact_mut(cols) {
            for v in &mut row[..used] {
                *v = uniform(s);
            }
        }
        let b: Vec<f32> = (0..rows).map(|_| uniform(0.1)).collect();
        let dims = [rows as u64, cols as u64];
        if spec.q8 {
            let mut q = vec![BlockQ8 { d: [0; 2], qs: [0; QK8] }; m.len() / QK8];
            quantize_row_q8(&m, &mut q);
            w.tensor(&format!("{name}.weight"), Dtype::Q8, &dims, bytemuck::cast_slice(&q).to_vec())
        } else {
            w.tensor(&format!("{name}.weight"), Dtype::F32, &dims, bytemuck::cast_slice(&m).to_vec())
        }
        .expect("valid tensor");
        w.tensor(&format!("{name}.bias"), Dtype::F32, &[rows as u64], bytemuck::cast_slice(&b).to_vec())
            .expect("valid tensor");
    };
    for (l, &(k, _)) in spec.layers.iter().enumerate() {
        let (m, cin) = (k / 2, if l == 0 { 1 } else { c });
        let htaps = if l == 0 { m } else { m + 1 };
        conv(&mut w, &format!("l{l}.vconv"), 2 * c, (m + 1) * k * cin);
        conv(&mut w, &format!("l{l}.hconv"), 2 * c, htaps * cin);
        conv(&mut w, &format!("l{l}.v2h"), 2 * c, 2 * c);
        if l > 0 {
            conv(&mut w, &format!("l{l}.hout"), c, c);
        }
    }
    conv(&mut w, "out1", 2 * oh, c);
    conv(&mut w, "out2", spec.levels, oh);
    let mut bytes = Vec::new();
    w.write(&mut bytes).expect("writing to memory");
    bytes
}
