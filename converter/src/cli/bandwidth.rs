//! `arq bench --bandwidth`: the DRAM read ceiling that decode is measured against.
//!
//! Decoding one token reads every weight once, so tokens/s x weight bytes per token
//! over this figure is the share of the memory bandwidth a decoder reaches. The
//! reference is a plain streaming sum over a buffer far larger than any cache, split
//! evenly over the threads, as a decoder splits its matrices.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::median;

/// The buffer read: 1 GiB, far beyond the last-level cache of any CPU this runs on.
const BYTES: usize = 1 << 30;
/// Timed passes after one warm-up; the median is reported.
const PASSES: usize = 5;

/// Sum of `buf` as u64 words, 8 independent chains so the loads are the limit.
fn stream_sum(buf: &[u8]) -> u64 {
    let (chunks, _) = buf.as_chunks::<64>();
    let mut acc = [0u64; 8];
    for c in chunks {
        let (words, _) = c.as_chunks::<8>();
        for (a, w) in acc.iter_mut().zip(words) {
            *a = a.wrapping_add(u64::from_le_bytes(*w));
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// GB/s of one pass of `threads` threads over `buf`, each summing its share.
fn pass(buf: &[u8], threads: usize) -> f64 {
    let part = buf.len().div_ceil(threads);
    let t = Instant::now();
    let sum = std::thread::scope(|s| {
        let handles: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || stream_sum(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
    });
    std::hint::black_box(sum);
    buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9
}

pub fn run(threads: usize, json: bool) -> Result<()> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(BYTES).context("cannot allocate the 1 GiB read buffer")?;
    // Distinct non-zero bytes, so every page is backed by memory of its own.
    buf.extend((0..BYTES).map(|i| (i % 251) as u8 | 1));
    pass(&buf, threads);
    let gbs = median((0..PASSES).map(|_| pass(&buf, threads)).collect());
    if json {
        println!("{}", json!({ "read_gb_per_s": gbs, "threads": threads, "bytes": BYTES, "passes": PASSES }));
    } else {
        println!("memory read bandwidth: {gbs:.2} GB/s ({threads} threads, 1 GiB streamed, median of {PASSES} passes)");
    }
    Ok(())
}
