//! `arq tune`: time the decode step of a text model under each kernel setting this CPU
//! can run, and cache the fastest for this CPU model (`arq_convert::tune`).
//!
//! The settings change speed only (every tier is bit-exact), so the search is free to
//! pick any. Candidates alternate round after round, so drifting load on a shared
//! machine hits them all alike; the winner is the lowest median ms per token, kept only
//! if it beats the median of this CPU's defaults by more than 2 % (noise otherwise
//! decides).

use std::time::Instant;

use anyhow::{bail, Result};
use arq::kernels::tune::{self, DecodeRows, DecodeTier, Tuning};
use arq::parallel::{Parallel, ThreadPool};
use arq::{math, Model, Session, SessionConfig};
use arq_convert::tune as cache;
use serde_json::json;

use super::median;

/// Prefetch distances tried, in bytes (0: none).
const DISTANCES: [usize; 5] = [0, 1024, 4096, 8192, 16384];
/// Decode steps per timed run.
const STEPS: usize = 16;
/// A candidate must beat the defaults' median by this share to be chosen.
const MARGIN: f64 = 0.02;

pub struct TuneArgs {
    pub rounds: usize,
    pub json: bool,
    pub save: bool,
}

/// Runs the search on `model` and prints (and, with `save`, caches) the result.
pub fn run(model: &Model<'_>, path: &str, pool: &ThreadPool, args: &TuneArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let candidates = candidates(model.kernels().name);
    let cfg = SessionConfig { ctx: 8 + STEPS + 1, batch: 8, threads: pool.threads(), ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg)?];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    let before = tune::get();
    // Round 0 warms the caches and the page mappings; it is not recorded.
    for round in 0..=args.rounds {
        for (i, c) in candidates.iter().enumerate().cycle().skip(round).take(candidates.len()) {
            tune::set(*c);
            let ms = decode_ms(model, &mut arena, cfg, pool)?;
            if round > 0 {
                times[i].push(ms);
            }
        }
    }
    tune::set(before);
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let default_ms = medians[0];
    let (best, best_ms) = medians
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, &ms)| (candidates[i], ms))
        .unwrap_or((candidates[0], default_ms));
    let chosen = if best_ms < default_ms * (1.0 - MARGIN) { best } else { candidates[0] };
    let measured: Vec<_> = candidates
        .iter()
        .zip(&medians)
        .map(|(c, ms)| json!({ "prefetch_bytes": c.prefetch, "decode_tier": c.decode_tier.name(), "decode_rows": c.decode_rows.name(), "ms_per_token": ms }))
        .collect();
    let record = json!({
        "model": path, "threads": pool.threads(), "kernels": model.kernels().name,
        "rounds": args.rounds, "steps": STEPS, "candidates": measured,
    });
    let saved = if args.save { Some(cache::write_cache(&chosen, record.clone())?) } else { None };
    print(args, &chosen, default_ms, medians_of(&candidates, &medians, &chosen), &record, saved);
    Ok(())
}

/// The settings tried: this CPU's defaults first, then every distance with rows in
/// tiles and one at a time, on the tier's own path and (on AVX-512) the AVX2 path.
fn candidates(tier: &str) -> Vec<Tuning> {
    let first = cache::vendor_default();
    let mut c = vec![first];
    let tiers: &[DecodeTier] =
        if tier == "avx512vnni" { &[DecodeTier::Own, DecodeTier::Avx2] } else { &[DecodeTier::Own] };
    for &decode_tier in tiers {
        for decode_rows in [DecodeRows::Tile, DecodeRows::One] {
            for &prefetch in &DISTANCES {
                let t = Tuning { prefetch, decode_tier, decode_rows };
                if t != first {
                    c.push(t);
                }
            }
        }
    }
    c
}

/// Milliseconds per decode step of a fresh session after a short prompt.
fn decode_ms(model: &Model<'_>, arena: &mut [u8], cfg: SessionConfig, pool: &ThreadPool) -> Result<f64> {
    let mut s = Session::new(model, arena, cfg)?;
    s.set_parallel(pool)?;
    let prompt: Vec<u32> = (1..=8).collect();
    let mut next = math::argmax(s.prefill(&prompt)?) as u32;
    let t = Instant::now();
    for _ in 0..STEPS {
        next = math::argmax(s.step(next)?) as u32;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / STEPS as f64)
}

fn medians_of(candidates: &[Tuning], medians: &[f64], chosen: &Tuning) -> f64 {
    candidates.iter().zip(medians).find(|(c, _)| *c == chosen).map_or(f64::NAN, |(_, &m)| m)
}

fn print(
    args: &TuneArgs,
    chosen: &Tuning,
    default_ms: f64,
    chosen_ms: f64,
    record: &serde_json::Value,
    saved: Option<std::path::PathBuf>,
) {
    if args.json {
        let mut v = record.clone();
        v["chosen"] = json!({
            "prefetch_bytes": chosen.prefetch,
            "decode_tier": chosen.decode_tier.name(),
            "decode_rows": chosen.decode_rows.name(),
            "ms_per_token": chosen_ms,
        });
        v["default_ms_per_token"] = json!(default_ms);
        v["cpu"] = json!(cache::cpu_id());
        v["saved"] = json!(saved.map(|p| p.display().to_string()));
        println!("{v}");
        return;
    }
    println!("cpu: {}", cache::cpu_id());
    for c in record["candidates"].as_array().into_iter().flatten() {
        println!(
            "  prefetch {:>5} B, decode tier {:<4}, rows {:<4}  {:.3} ms/token",
            c["prefetch_bytes"].as_u64().unwrap_or(0),
            c["decode_tier"].as_str().unwrap_or(""),
            c["decode_rows"].as_str().unwrap_or(""),
            c["ms_per_token"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "chosen: prefetch {} B, decode tier {}, rows {}: {:.3} ms/token (defaults {:.3}, {:.2}x)",
        chosen.prefetch,
        chosen.decode_tier.name(),
        chosen.decode_rows.name(),
        chosen_ms,
        default_ms,
        default_ms / chosen_ms
    );
    match saved {
        Some(p) => println!("saved to {} (used by every arq command on this CPU model)", p.display()),
        None => println!("not saved (--no-save)"),
    }
}
