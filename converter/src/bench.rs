//! `arq bench`: load time, prompt and generation tokens/s, peak RSS — medians over
//! repetitions after a warm-up, on the model's own tokens.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use arq::parallel::{Parallel, ThreadPool};
use arq::{math, Model, Session, SessionConfig};
use serde_json::json;

use arq_convert::aligned::ModelBytes;

pub struct BenchArgs {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub json: bool,
    pub backend: crate::backend::BackendArg,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Prompt ids: the built-in calibration text's tokens, repeated to `n`.
fn prompt_ids(model: &Model<'_>, n: usize) -> Result<Vec<u32>> {
    let tok = model.tokenizer().map_err(|e| anyhow!("tokenizer: {e}"))?;
    let base = tok.encode(arq_convert::report::CALIBRATION_TEXT, false);
    if base.is_empty() {
        bail!("calibration text has no tokens");
    }
    Ok(base.iter().copied().cycle().take(n).collect())
}

pub fn run(path: &Path, args: &BenchArgs, pool: &ThreadPool) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.reps == 0 {
        bail!("--prompt-tokens, --gen-tokens and --reps must be at least 1");
    }
    // Load: map, validate, plan and carve the arena, first token from a 1-token prompt.
    let t0 = Instant::now();
    let bytes = ModelBytes::map(path)?;
    let model = Model::load(bytes.bytes()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let ctx = args.prompt_tokens + args.gen_tokens;
    if ctx > model.config().ctx_train {
        bail!("prompt + generated tokens ({ctx}) exceed the model's context ({})", model.config().ctx_train);
    }
    let cfg = SessionConfig { ctx, batch: 32, threads: pool.threads(), ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg)?];
    // A GPU backend uploads the matrices here: part of loading.
    let backend = crate::backend::open(args.backend, &model, &cfg, pool)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let first_token_ms = {
        let mut s = Session::new(&model, &mut arena, cfg)?;
        s.set_parallel(pool)?;
        s.set_offload(backend.offload())?;
        math::argmax(s.step(1)?);
        t0.elapsed().as_secs_f64() * 1e3
    };

    let ids = prompt_ids(&model, args.prompt_tokens)?;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    let (mut measured_s, mut gpu_before) = (0.0, 0.0);
    for rep in 0..=args.reps {
        if rep == 1 {
            gpu_before = backend.gpu_stats().map_or(0.0, |(_, s)| s);
        }
        let mut s = Session::new(&model, &mut arena, cfg)?;
        s.set_parallel(pool)?;
        s.set_offload(backend.offload())?;
        let t = Instant::now();
        let mut next = math::argmax(s.prefill(&ids)?) as u32;
        let prompt_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..args.gen_tokens {
            next = math::argmax(s.step(next)?) as u32;
        }
        let gen_s = t.elapsed().as_secs_f64();
        if rep > 0 {
            // Repetition 0 is the warm-up.
            measured_s += prompt_s + gen_s;
            pp.push(args.prompt_tokens as f64 / prompt_s);
            tg.push(args.gen_tokens as f64 / gen_s);
        }
    }
    let (pp, tg) = (median(pp), median(tg));
    // Share of the measured wall time spent in GPU calls (activations up, kernels, products back).
    let gpu_share = backend.gpu_stats().map(|(_, s)| (s - gpu_before) / measured_s);
    let rss = peak_rss_bytes();
    if args.json {
        println!(
            "{}",
            json!({
                "model": path.display().to_string(),
                "threads": pool.threads(),
                "kernels": model.kernels().name,
                "load_ms": load_ms,
                "first_token_ms": first_token_ms,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "reps": args.reps,
                "prompt_tokens_per_s": pp,
                "gen_tokens_per_s": tg,
                "peak_rss_bytes": rss,
                "arena_bytes": arena.len(),
                "backend": if backend.offload().is_some() { "gpu" } else { "cpu" },
                "adapter": backend.adapter(),
                "gpu_time_share": gpu_share,
            })
        );
    } else {
        println!(
            "{}: {} threads, {} kernels, backend {}, {} reps (medians)",
            path.display(),
            pool.threads(),
            model.kernels().name,
            backend.describe(),
            args.reps
        );
        println!("  load             {load_ms:.1} ms (first token at {first_token_ms:.1} ms)");
        println!("  prompt ({:>4})    {pp:.1} tok/s", args.prompt_tokens);
        println!("  generation ({:>3}) {tg:.1} tok/s", args.gen_tokens);
        if let Some(share) = gpu_share {
            println!("  gpu calls        {:.0} % of the time (the rest: CPU work of the step)", share * 100.0);
        }
        if let Some(r) = rss {
            println!(
                "  peak RSS         {:.1} MiB (arena {:.1} MiB)",
                r as f64 / 1048576.0,
                arena.len() as f64 / 1048576.0
            );
        }
    }
    Ok(())
}
