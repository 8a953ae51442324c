//! Kernel micro-benchmarks, per tier this CPU supports: weight GB/s and GMAC/s of the
//! matrix products at SmolLM2-135M's shapes (in cache: the DRAM-bound whole-model view is
//! `arq bench`), plus activation quantization. Run: `cargo bench -p arq --features std`.

use arq::kernels;
use arq::quant::{quantize_row_q4, quantize_row_q8, BlockQ4, BlockQ8, QK8};
use bytemuck::Zeroable;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn products(c: &mut Criterion) {
    // (rows, cols): attention/ffn matrices of SmolLM2-135M.
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let w = values(rows * cols, 1);
        let mut w8 = vec![BlockQ8::zeroed(); rows * cols / QK8];
        quantize_row_q8(&w, &mut w8);
        let mut w4 = vec![BlockQ4::zeroed(); rows * cols / QK8];
        quantize_row_q4(&w, &mut w4);
        for tokens in [1usize, 32] {
            let x = values(tokens * cols, 2);
            let mut xq = vec![BlockQ8::zeroed(); tokens * cols / QK8];
            quantize_row_q8(&x, &mut xq);
            let mut out = vec![0.0f32; tokens * rows];
            let macs = (rows * cols * tokens) as u64;
            let mut g = c.benchmark_group(format!("q8 {rows}x{cols} x{tokens} tokens (MAC/s)"));
            g.throughput(Throughput::Elements(macs));
            for k in kernels::available() {
                g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                    b.iter(|| (k.matmul_q8)(&w8, rows, &xq, &mut out))
                });
            }
            g.finish();
            let mut g = c.benchmark_group(format!("q4 {rows}x{cols} x{tokens} tokens (MAC/s)"));
            g.throughput(Throughput::Elements(macs));
            for k in kernels::available() {
                g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                    b.iter(|| (k.matmul_q4_q8)(&w4, rows, &xq, &mut out))
                });
            }
            g.finish();
            if tokens == 1 {
                let mut g = c.benchmark_group(format!("q8 {rows}x{cols} x1 token (weight bytes/s)"));
                g.throughput(Throughput::Bytes(std::mem::size_of_val(w8.as_slice()) as u64));
                for k in kernels::available() {
                    g.bench_function(BenchmarkId::from_parameter(k.name), |b| {
                        b.iter(|| (k.matmul_q8)(&w8, rows, &xq, &mut out))
                    });
                }
                g.finish();
            }
        }
    }
}

fn activations(c: &mut Criterion) {
    let x = values(32 * 1536, 3);
    let mut q = vec![BlockQ8::zeroed(); x.len() / QK8];
    let mut g = c.benchmark_group("quantize_q8 32x1536 (values/s)");
    g.throughput(Throughput::Elements(x.len() as u64));
    for k in kernels::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name), |b| b.iter(|| (k.quantize_q8)(&x, &mut q)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = products, activations
}
criterion_main!(benches);
