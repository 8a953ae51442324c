//! Every GPU kernel against the scalar contract on the same inputs: the integer parts
//! exactly (unit scales make the output the exact integer sum), the float parts within
//! [`FLOAT_TOLERANCE`], over block counts 1, block-lane boundaries and odd row counts,
//! for both the `dot4I8Packed` and the i32 kernels.
//!
//! Without an adapter these tests print a note and pass, unless `ARQ_REQUIRE_GPU` is set
//! (as `scripts/test-all.sh` does, with lavapipe installed), when they fail.

use super::*;
use crate::kernels::scalar;
use crate::quant::{quantize_row_q4, quantize_row_q8, QK4};
use std::sync::OnceLock;

/// The float budget: |gpu - cpu| <= FLOAT_TOLERANCE * sum_j |term_j|, the terms being
/// each block's `isum * d_w * d_x` (and `xsum * m_w * d_x` for q4). A few f32 ulps of
/// the absolute sum, for drivers that round differently; lavapipe gives 0 (bit for bit).
const FLOAT_TOLERANCE: f64 = 1e-6;

pub(crate) fn device(force_i32_dot: bool) -> Option<GpuDevice> {
    static DEVS: [OnceLock<Option<GpuDevice>>; 2] = [OnceLock::new(), OnceLock::new()];
    DEVS[force_i32_dot as usize]
        .get_or_init(|| match GpuDevice::new(&GpuOptions { force_i32_dot, ..Default::default() }) {
            Ok(d) => {
                eprintln!("gpu tests on {}", d.describe());
                Some(d)
            }
            Err(GpuError::NoAdapter) if std::env::var_os("ARQ_REQUIRE_GPU").is_none() => {
                eprintln!("note: no GPU adapter (install mesa-vulkan-drivers for lavapipe); skipping the GPU tests");
                None
            }
            Err(e) => panic!("the GPU path must run (ARQ_REQUIRE_GPU): {e}"),
        })
        .clone()
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn f(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
    fn i8(&mut self) -> i8 {
        ((self.next() % 255) as i32 - 127) as i8
    }
}

fn unit_q8(rng: &mut Lcg, blocks: usize) -> Vec<BlockQ8> {
    (0..blocks)
        .map(|_| BlockQ8 { d: half::f16::from_f32(1.0).to_le_bytes(), qs: core::array::from_fn(|_| rng.i8()) })
        .collect()
}

fn random_q8(rng: &mut Lcg, n: usize) -> Vec<BlockQ8> {
    let x: Vec<f32> = (0..n * QK8).map(|_| rng.f() * 3.0).collect();
    let mut b = vec![BlockQ8 { d: [0; 2], qs: [0; QK8] }; n];
    quantize_row_q8(&x, &mut b);
    b
}

fn random_q4(rng: &mut Lcg, n: usize) -> Vec<BlockQ4> {
    let x: Vec<f32> = (0..n * QK4).map(|_| rng.f() * 0.5).collect();
    let mut b = vec![BlockQ4 { d: [0; 2], m: [0; 2], qs: [0; QK4 / 2] }; n];
    quantize_row_q4(&x, &mut b);
    b
}

/// (rows, blocks per row, tokens): one block, lane boundaries (7, 8, 9), odd row counts
/// around the workgroup size, one token and a full batch.
const SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (63, 7, 3), (64, 8, 1), (65, 9, 32), (130, 18, 2), (7, 48, 5), (200, 2, 1)];

fn gpu_products(dev: &GpuDevice, w: Weight<'_>, rows: usize, kb: usize, x: &[BlockQ8], n: usize) -> Vec<f32> {
    let g = GpuMatmul::new(dev.clone(), &[(w, rows, kb * QK8)], n).unwrap();
    let mut out = vec![f32::NAN; n * rows];
    g.run(x, n, &mut [(&w, rows, &mut out)]).unwrap();
    out
}

#[test]
fn q8_integer_parts_are_exact() {
    for packed in [false, true] {
        let Some(dev) = device(!packed) else { return };
        let mut rng = Lcg(1);
        for (rows, kb, n) in SHAPES {
            let w = unit_q8(&mut rng, rows * kb);
            let x = unit_q8(&mut rng, n * kb);
            let got = gpu_products(&dev, Weight::Q8(&w), rows, kb, &x, n);
            for t in 0..n {
                for r in 0..rows {
                    let exact: i64 = (0..kb).map(|j| scalar::block_isum(&w[r * kb + j], &x[t * kb + j]) as i64).sum();
                    // |exact| < 2^24, so the f32 sum of integer lanes is exact too.
                    assert_eq!(got[t * rows + r], exact as f32, "{} r{r} t{t} {rows}x{kb}x{n}", dev.describe());
                }
            }
        }
    }
}

#[test]
fn q4_integer_parts_are_exact() {
    for packed in [false, true] {
        let Some(dev) = device(!packed) else { return };
        let mut rng = Lcg(2);
        for (rows, kb, n) in SHAPES {
            let x = unit_q8(&mut rng, n * kb);
            let mut w = random_q4(&mut rng, rows * kb);
            // Scale 1, minimum 0 gives the weight sums; scale 0, minimum 1 the activation sums.
            for (d, m, part) in [(1.0f32, 0.0f32, 0usize), (0.0, 1.0, 1)] {
                for b in w.iter_mut() {
                    b.d = half::f16::from_f32(d).to_le_bytes();
                    b.m = half::f16::from_f32(m).to_le_bytes();
                }
                let got = gpu_products(&dev, Weight::Q4(&w), rows, kb, &x, n);
                for t in 0..n {
                    for r in 0..rows {
                        let exact: i64 = (0..kb)
                            .map(|j| {
                                let s = scalar::block_isum_q4(&w[r * kb + j], &x[t * kb + j]);
                                [s.0, s.1][part] as i64
                            })
                            .sum();
                        assert_eq!(got[t * rows + r], exact as f32, "{} r{r} t{t} part {part}", dev.describe());
                    }
                }
            }
        }
    }
}

/// Sum over blocks of the absolute float terms of one output (the tolerance's scale).
fn magnitude_q8(w: &[BlockQ8], x: &[BlockQ8]) -> f64 {
    w.iter().zip(x).map(|(a, b)| (scalar::block_isum(a, b) as f64 * (a.scale() * b.scale()) as f64).abs()).sum()
}

fn magnitude_q4(w: &[BlockQ4], x: &[BlockQ8]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(a, b)| {
            let (i, s) = scalar::block_isum_q4(a, b);
            (i as f64 * (a.scale() * b.scale()) as f64).abs() + (s as f64 * (a.min() * b.scale()) as f64).abs()
        })
        .sum()
}

#[test]
fn float_parts_match_the_scalar_kernels_within_tolerance() {
    for packed in [false, true] {
        let Some(dev) = device(!packed) else { return };
        let mut rng = Lcg(3);
        let (mut worst, mut differing, mut total) = (0.0f64, 0usize, 0usize);
        for (rows, kb, n) in SHAPES {
            let x = random_q8(&mut rng, n * kb);
            // Three products in one call, as q, k and v are.
            let w8 = random_q8(&mut rng, rows * kb);
            let w4 = random_q4(&mut rng, rows * kb);
            let w8b = random_q8(&mut rng, 2 * rows * kb);
            let ws = [(Weight::Q8(&w8), rows), (Weight::Q4(&w4), rows), (Weight::Q8(&w8b), 2 * rows)];
            let list: Vec<_> = ws.iter().map(|&(w, r)| (w, r, kb * QK8)).collect();
            let g = GpuMatmul::new(dev.clone(), &list, n).unwrap();
            let mut outs: Vec<Vec<f32>> = ws.iter().map(|&(_, r)| vec![f32::NAN; n * r]).collect();
            {
                let [o0, o1, o2] = &mut outs[..] else { unreachable!() };
                g.run(&x, n, &mut [(&ws[0].0, rows, o0), (&ws[1].0, rows, o1), (&ws[2].0, 2 * rows, o2)]).unwrap();
            }
            for (&(w, r), got) in ws.iter().zip(&outs) {
                let mut want = vec![0.0f32; n * r];
                match w {
                    Weight::Q8(b) => scalar::matmul_q8(b, r, &x, &mut want),
                    Weight::Q4(b) => scalar::matmul_q4_q8(b, r, &x, &mut want),
                    Weight::F32(_) => unreachable!(),
                }
                for t in 0..n {
                    for row in 0..r {
                        let (wr, xt) = (row * kb..(row + 1) * kb, t * kb..(t + 1) * kb);
                        let mag = match w {
                            Weight::Q8(b) => magnitude_q8(&b[wr], &x[xt]),
                            Weight::Q4(b) => magnitude_q4(&b[wr], &x[xt]),
                            Weight::F32(_) => unreachable!(),
                        };
                        let (a, b) = (got[t * r + row], want[t * r + row]);
                        let err = (a as f64 - b as f64).abs() / mag.max(f64::MIN_POSITIVE);
                        assert!(err <= FLOAT_TOLERANCE, "{}: {a} vs {b} (relative {err:e})", dev.describe());
                        worst = worst.max(err);
                        differing += (a.to_bits() != b.to_bits()) as usize;
                        total += 1;
                    }
                }
            }
        }
        eprintln!(
            "{}: {differing} of {total} outputs differ from the scalar kernels' bits; worst {worst:e} of the absolute sum",
            dev.describe()
        );
    }
}

#[test]
fn split_matrices_give_identical_products() {
    let Some(dev) = device(false) else { return };
    let mut rng = Lcg(4);
    let (rows, kb, n) = (70, 9, 4);
    let w = random_q8(&mut rng, rows * kb);
    let w4 = random_q4(&mut rng, rows * kb);
    let x = random_q8(&mut rng, n * kb);
    // At most 8 rows per buffer: q8 rows are 9 * 32 bytes of quants.
    let small =
        GpuDevice { opts: GpuOptions { max_binding_bytes: Some(8 * 9 * 32), ..Default::default() }, ..dev.clone() };
    for wt in [Weight::Q8(&w), Weight::Q4(&w4)] {
        let whole = gpu_products(&dev, wt, rows, kb, &x, n);
        let g = GpuMatmul::new(small.clone(), &[(wt, rows, kb * QK8)], n).unwrap();
        // 8 q8 rows (or 16 q4 rows: 9 * 16 bytes each) per buffer.
        let want = if matches!(wt, Weight::Q8(_)) { 9 } else { 5 };
        assert_eq!(g.parts(&wt), Some(want));
        let mut out = vec![f32::NAN; n * rows];
        g.run(&x, n, &mut [(&wt, rows, &mut out)]).unwrap();
        assert_eq!(bits(&out), bits(&whole));
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn too_little_memory_is_refused_before_upload() {
    let Some(dev) = device(false) else { return };
    let mut rng = Lcg(5);
    let w = random_q8(&mut rng, 64 * 4);
    let tight = GpuDevice { opts: GpuOptions { memory_limit: Some(4096), ..Default::default() }, ..dev.clone() };
    let e = GpuMatmul::new(tight, &[(Weight::Q8(&w), 64, 128)], 1).err().expect("must refuse");
    let msg = e.to_string();
    assert!(matches!(e, GpuError::OutOfMemory { need, have: Some(4096), .. } if need > 4096), "{msg}");
    assert!(msg.contains(dev.adapter_name()) && msg.contains("MiB") && !msg.contains('\n'), "{msg}");
}

#[test]
fn f32_matrices_and_wrong_calls_are_refused() {
    let Some(dev) = device(false) else { return };
    let wf = vec![0.0f32; 64];
    let e = GpuMatmul::new(dev.clone(), &[(Weight::F32(&wf), 2, 32)], 1).err().expect("must refuse");
    assert!(e.to_string().contains("q8 and q4"), "{e}");
    let mut rng = Lcg(6);
    let (w, other) = (random_q8(&mut rng, 4), random_q8(&mut rng, 4));
    let x = random_q8(&mut rng, 2);
    let g = GpuMatmul::new(dev, &[(Weight::Q8(&w), 2, 64)], 1).unwrap();
    let mut out = vec![0.0; 2];
    assert!(g.run(&x, 1, &mut [(&Weight::Q8(&other), 2, &mut out)]).is_err(), "a matrix never uploaded");
    let mut out2 = vec![0.0; 4];
    assert!(g.run(&random_q8(&mut rng, 4), 2, &mut [(&Weight::Q8(&w), 2, &mut out2)]).is_err(), "over max_tokens");
}
