//! `arq generate`, `next`, `score` and `bench` on text models: arguments in, the
//! library's results printed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use arq::parallel::{Parallel, ThreadPool};
use arq::sampler::{Sampler, SamplerConfig};
use arq::tokenizer::Tokenizer;
use arq::{math, KvDtype, Model, Session, SessionConfig};
use arq_convert::model::ModelFile;
use arq_convert::text::{self, encode_prompt, new_arena, session_config, token_text, tokenizer};
use serde_json::json;

use super::backend::{self, BackendArg};
use super::{median, text_model, KvArg, SamplingArgs, ThreadsArg};

pub struct GenerateArgs<'a> {
    pub prompt: &'a str,
    pub n: usize,
    pub sampling: &'a SamplingArgs,
    pub ctx: Option<usize>,
    pub chat: bool,
    pub kv: KvArg,
}

pub(super) fn sampler(s: &SamplingArgs) -> Result<Sampler> {
    let cfg = SamplerConfig {
        temperature: s.temp,
        top_k: s.top_k.unwrap_or(0) as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: 64,
        seed: s.seed,
    };
    Sampler::new(cfg).map_err(|e| anyhow!("{e}"))
}

/// `arq generate --interactive`: a chat on standard input, one user message a line (`-p`,
/// when given, is the first), each reply streamed to stdout. The KV cache stays between
/// turns: each turn's conversation, rendered whole by the chat template, reuses the
/// cached tokens it begins with and feeds only the rest (a sliding-window cache that
/// cannot rewind that far, or a shifted context, starts over).
pub fn interactive(path: &Path, a: &GenerateArgs<'_>, threads: &ThreadsArg, backend: BackendArg) -> Result<()> {
    let pool = threads.pool()?;
    let mut sampler = sampler(a.sampling)?;
    let file = ModelFile::open(path)?;
    let model = text_model(&file)?;
    let tok = tokenizer(&model)?;
    let cfg = session_config(&model, a.ctx, a.kv.into(), pool.threads())?;
    let backend = backend::open(backend, &model, &cfg, &pool)?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    session.set_offload(backend.offload())?;

    let mut out = std::io::stdout().lock();
    let mut lines = std::io::stdin().lines();
    let mut first = (!a.prompt.is_empty()).then(|| a.prompt.to_string());
    let mut turns: Vec<(&str, String)> = Vec::new();
    // The tokens in the session's KV cache, in order.
    let mut cached: Vec<u32> = Vec::new();
    loop {
        let line = match first.take() {
            Some(p) => p,
            None => match lines.next() {
                Some(line) => line.map_err(|e| anyhow!("cannot read standard input: {e}"))?,
                None => break,
            },
        };
        if line.trim().is_empty() {
            continue;
        }
        turns.push(("user", line));
        let messages: Vec<(&str, &str)> = turns.iter().map(|(r, c)| (*r, c.as_str())).collect();
        let ids = text::chat_ids(&model, &tok, &messages)?;
        if ids.len() >= cfg.ctx {
            bail!("the conversation is {} tokens, longer than the context ({}); raise --ctx", ids.len(), cfg.ctx);
        }
        // At least the last token is fed, for its logits.
        let mut reused = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        if session.truncate(reused).is_err() {
            session.reset();
            reused = 0;
        }
        let g = text::generate(&mut session, &tok, &mut sampler, &ids[reused..], a.n, |s| {
            out.write_all(s.as_bytes()).and_then(|_| out.flush())
        })?;
        writeln!(out)?;
        eprintln!(
            "[{} tokens of conversation, {reused} reused from the cache | {} generated, {:.1} tok/s ({})]",
            ids.len(),
            g.tokens,
            if g.tokens > 0 { g.tokens as f64 / g.gen_s } else { 0.0 },
            g.stop.name()
        );
        turns.push(("assistant", tok.decode(&g.ids)));
        cached = if g.shifts == 0 { [&ids[..], &g.ids[..]].concat() } else { Vec::new() };
        cached.truncate(session.pos());
    }
    Ok(())
}

pub fn generate(path: &Path, a: &GenerateArgs<'_>, threads: &ThreadsArg, backend: BackendArg) -> Result<()> {
    let pool = threads.pool()?;
    let mut sampler = sampler(a.sampling)?;
    let file = ModelFile::open(path)?;
    let model = text_model(&file)?;
    let tok = tokenizer(&model)?;
    let cfg = session_config(&model, a.ctx, a.kv.into(), pool.threads())?;
    let ids = encode_prompt(&model, &tok, a.prompt, a.chat)?;
    if ids.len() >= cfg.ctx {
        bail!("prompt is {} tokens, longer than the context ({}); raise --ctx or shorten it", ids.len(), cfg.ctx);
    }
    let backend = backend::open(backend, &model, &cfg, &pool)?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    session.set_offload(backend.offload())?;

    let out = std::io::stdout();
    let mut out = out.lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
    let g = text::generate(&mut session, &tok, &mut sampler, &ids, a.n, |s| {
        out.write_all(s.as_bytes()).and_then(|_| out.flush())
    })?;
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s ({}{}) | kernels: {}, threads: {}, backend: {}",
        ids.len(),
        ids.len() as f64 / g.prompt_s,
        g.tokens,
        if g.tokens > 0 { g.tokens as f64 / g.gen_s } else { 0.0 },
        g.stop.name(),
        match g.shifts {
            0 => String::new(),
            k => format!(", context shifted {k}x"),
        },
        model.kernels().name,
        pool.threads(),
        backend.describe()
    );
    Ok(())
}

pub fn next(
    path: &Path,
    prompt: &str,
    top: usize,
    (chat, json_out): (bool, bool),
    kv: KvArg,
    threads: &ThreadsArg,
) -> Result<()> {
    let pool = threads.pool()?;
    let file = ModelFile::open(path)?;
    let model = text_model(&file)?;
    let tok = tokenizer(&model)?;
    let ids = encode_prompt(&model, &tok, prompt, chat)?;
    let cfg = session_config(&model, Some(ids.len().max(1)), kv.into(), pool.threads())
        .map_err(|_| anyhow!("prompt is {} tokens, longer than the model's context", ids.len()))?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    let rows: Vec<_> = text::top_tokens(session.prefill(&ids)?, top)
        .into_iter()
        .map(|(id, lp)| (id, token_text(&tok, id), lp.exp(), lp))
        .collect();
    if json_out {
        let top: Vec<_> =
            rows.iter().map(|(id, text, p, lp)| json!({"id": id, "token": text, "prob": p, "logprob": lp})).collect();
        println!("{}", json!({"prompt_tokens": ids.len(), "top": top}));
    } else {
        println!("p(x_{} | {} prompt tokens):", ids.len() + 1, ids.len());
        for (id, text, p, lp) in rows {
            println!("{:>8.4}%  {lp:>9.4}  {id:>6}  {:?}", 100.0 * p, text);
        }
    }
    Ok(())
}

pub struct ScoreArgs {
    pub ctx: Option<usize>,
    pub windows: text::Windows,
    pub kv: KvArg,
    pub json: bool,
    pub per_token: bool,
}

pub fn score(file: &ModelFile, input: &Path, a: &ScoreArgs, threads: &ThreadsArg, backend: BackendArg) -> Result<()> {
    let pool = threads.pool()?;
    let content = arq_convert::input::read_capped(input, arq_convert::input::MAX_TEXT_BYTES, "the text")?;
    let content = String::from_utf8(content).map_err(|_| anyhow!("{}: not UTF-8 text", input.display()))?;
    let model = text_model(file)?;
    let tok = tokenizer(&model)?;
    let cfg = session_config(&model, a.ctx, a.kv.into(), pool.threads())?;
    if cfg.ctx < 2 {
        bail!("--ctx must be at least 2 to score");
    }
    let (ids, bos_added) = text::encode_text(&model, &tok, &content);
    if ids.len() < 2 {
        bail!("{}: fewer than 2 tokens, nothing to score", input.display());
    }
    let backend = backend::open(backend, &model, &cfg, &pool)?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    session.set_offload(backend.offload())?;
    let s = text::score_windows(&mut session, &ids, a.windows)?;
    print_score(&s, &tok, (cfg.ctx, bos_added), a);
    Ok(())
}

fn print_score(s: &text::Score, tok: &Tokenizer<'_>, (ctx, bos_added): (usize, bool), a: &ScoreArgs) {
    if a.json {
        println!("{}", s.to_json(tok, ctx, bos_added, a.per_token));
        return;
    }
    if a.per_token {
        for s in &s.scored {
            println!("{:>6} {:>6} {:>10.4} {:?}", s.pos, s.id, s.logprob, token_text(tok, s.id));
        }
    }
    let t = s.summary(tok);
    println!(
        "{} tokens scored ({} windows of {}, stride {}): NLL {:.3} nats, perplexity {:.4}, {:.4} bits/token, {:.4} bits/byte",
        t.tokens, s.windows, ctx, s.stride, t.nll_nats, t.perplexity, t.bits_per_token, t.bits_per_byte
    );
}

pub struct BenchArgs {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub json: bool,
    pub backend: BackendArg,
    /// The KV cache's storage.
    pub kv: KvDtype,
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub(super) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Prompt ids: the built-in calibration text's tokens, repeated to `n`.
fn prompt_ids(model: &Model<'_>, n: usize) -> Result<Vec<u32>> {
    let tok = tokenizer(model)?;
    let base = tok.encode(arq_convert::report::CALIBRATION_TEXT, false);
    if base.is_empty() {
        bail!("calibration text has no tokens");
    }
    Ok(base.iter().copied().cycle().take(n).collect())
}

/// Medians of the measured repetitions, and the share of their wall time spent in GPU calls.
struct Speeds {
    prompt_per_s: f64,
    gen_per_s: f64,
    gpu_share: Option<f64>,
}

/// Everything a bench session runs with.
struct Rig<'a> {
    model: &'a Model<'a>,
    cfg: SessionConfig,
    pool: &'a ThreadPool,
    backend: &'a backend::Backend,
}

impl Rig<'_> {
    fn session<'s>(&'s self, arena: &'s mut [u8]) -> Result<Session<'s>> {
        let mut s = Session::new(self.model, arena, self.cfg)?;
        s.set_parallel(self.pool)?;
        s.set_offload(self.backend.offload())?;
        Ok(s)
    }
}

/// Prompt and generation tokens/s over `args.reps` repetitions after one warm-up.
fn measure(rig: &Rig<'_>, arena: &mut [u8], ids: &[u32], args: &BenchArgs) -> Result<Speeds> {
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    let (mut measured_s, mut gpu_before) = (0.0, 0.0);
    for rep in 0..=args.reps {
        if rep == 1 {
            gpu_before = rig.backend.gpu_stats().map_or(0.0, |(_, s)| s);
        }
        let mut s = rig.session(arena)?;
        let t = Instant::now();
        let mut next = math::argmax(s.prefill(ids)?) as u32;
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
    // Share of the measured wall time spent in GPU calls (activations up, kernels, products back).
    let gpu_share = rig.backend.gpu_stats().map(|(_, s)| (s - gpu_before) / measured_s);
    Ok(Speeds { prompt_per_s: median(pp), gen_per_s: median(tg), gpu_share })
}

/// `arq bench` on a text model: load time (from mapping the file, `map` of which was
/// spent opening it, to the first token of a 1-token prompt), prompt and generation
/// tokens/s, peak RSS; medians over repetitions after a warm-up, on the model's own tokens.
pub fn bench(file: &ModelFile, map: Duration, args: &BenchArgs, pool: &ThreadPool) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.reps == 0 {
        bail!("--prompt-tokens, --gen-tokens and --reps must be at least 1");
    }
    // Load: map, validate, plan and carve the arena, first token from a 1-token prompt.
    let t0 = Instant::now();
    let model = text_model(file)?;
    let ctx = args.prompt_tokens + args.gen_tokens;
    if ctx > model.config().ctx_train {
        bail!("prompt + generated tokens ({ctx}) exceed the model's context ({})", model.config().ctx_train);
    }
    let cfg = SessionConfig { ctx, batch: 32, threads: pool.threads(), kv: args.kv, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg)?];
    // A GPU backend uploads the matrices here: part of loading.
    let backend = backend::open(args.backend, &model, &cfg, pool)?;
    let load_ms = (map + t0.elapsed()).as_secs_f64() * 1e3;
    let rig = Rig { model: &model, cfg, pool, backend: &backend };
    let first_token_ms = {
        let mut s = rig.session(&mut arena)?;
        math::argmax(s.step(1)?);
        (map + t0.elapsed()).as_secs_f64() * 1e3
    };
    let ids = prompt_ids(&model, args.prompt_tokens)?;
    let speeds = measure(&rig, &mut arena, &ids, args)?;
    print_bench(&rig, file.path(), args, (load_ms, first_token_ms), &speeds, arena.len());
    Ok(())
}

fn print_bench(
    rig: &Rig<'_>,
    path: &Path,
    args: &BenchArgs,
    (load_ms, first_token_ms): (f64, f64),
    s: &Speeds,
    arena: usize,
) {
    let (pp, tg, backend) = (s.prompt_per_s, s.gen_per_s, rig.backend);
    let rss = peak_rss_bytes();
    let tuning = arq_convert::tune::applied();
    if args.json {
        println!(
            "{}",
            json!({
                "model": path.display().to_string(),
                "threads": rig.pool.threads(),
                "kernels": rig.model.kernels().name,
                "kv": format!("{:?}", rig.cfg.kv).to_lowercase(),
                "tuning": arq_convert::tune::to_json(&tuning.0, &tuning.1),
                "load_ms": load_ms,
                "first_token_ms": first_token_ms,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "reps": args.reps,
                "prompt_tokens_per_s": pp,
                "gen_tokens_per_s": tg,
                "peak_rss_bytes": rss,
                "arena_bytes": arena,
                "backend": if backend.offload().is_some() { "gpu" } else { "cpu" },
                "adapter": backend.adapter(),
                "gpu_time_share": s.gpu_share,
            })
        );
        return;
    }
    println!(
        "{}: {} threads, {} kernels, backend {}, {} reps (medians)",
        path.display(),
        rig.pool.threads(),
        rig.model.kernels().name,
        backend.describe(),
        args.reps
    );
    let (t, source) = &tuning;
    println!(
        "  tuning           prefetch {} B, decode tier {}, rows {} ({})",
        t.prefetch,
        t.decode_tier.name(),
        t.decode_rows.name(),
        source.describe()
    );
    println!("  load             {load_ms:.1} ms (first token at {first_token_ms:.1} ms)");
    println!("  prompt ({:>4})    {pp:.1} tok/s", args.prompt_tokens);
    println!("  generation ({:>3}) {tg:.1} tok/s", args.gen_tokens);
    if let Some(share) = s.gpu_share {
        println!("  gpu calls        {:.0} % of the time (the rest: CPU work of the step)", share * 100.0);
    }
    if let Some(r) = rss {
        println!("  peak RSS         {:.1} MiB (arena {:.1} MiB)", r as f64 / 1048576.0, arena as f64 / 1048576.0);
    }
}
