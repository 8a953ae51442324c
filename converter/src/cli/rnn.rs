//! `arq generate`, `next`, `score`, `inspect` and `bench` on recurrent models (LSTM, GRU):
//! arguments in, the library's results ([`arq_convert::recurrent`]) printed.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use arq::{Rnn, RnnSession};
use arq_convert::recurrent::{self, encode, level, start_token, tokenizer};
use arq_convert::text::{self as text_jobs, token_text};
use serde_json::json;

use super::backend::BackendArg;
use super::text::sampler;
use super::{KvArg, SamplingArgs};

/// Refuses the flags that mean nothing for a recurrent model: its state has a fixed
/// size (no context length, no KV cache) and it runs on the CPU; it has no chat template.
pub fn refuse_flags(ctx: Option<usize>, kv: KvArg, backend: BackendArg, chat: bool) -> Result<()> {
    if ctx.is_some() {
        bail!(
            "--ctx means nothing for a recurrent model: its state has a fixed size and every step sees the whole text"
        );
    }
    if kv != KvArg::F32 {
        bail!("--kv applies to transformer models; a recurrent model has no KV cache");
    }
    if backend != BackendArg::Cpu {
        bail!("--backend applies to transformer models; recurrent models run on the CPU");
    }
    if chat {
        bail!("--chat and --interactive need a chat template; a recurrent model has none");
    }
    Ok(())
}

/// The prompt's ids, or the start token for an empty prompt.
fn prompt_ids(tok: &arq::tokenizer::Tokenizer<'_>, prompt: &str) -> Result<Vec<u32>> {
    let ids = encode(tok, prompt)?;
    Ok(if ids.is_empty() { vec![start_token(tok)] } else { ids })
}

fn arena(model: &Rnn<'_>) -> Result<Vec<u8>> {
    Ok(vec![0u8; model.memory_plan()?])
}

pub fn generate(model: &Rnn<'_>, prompt: &str, n: usize, sampling: &SamplingArgs) -> Result<()> {
    let tok = tokenizer(model)?;
    let mut sampler = sampler(sampling)?;
    let ids = prompt_ids(&tok, prompt)?;
    let mut arena = arena(model)?;
    let mut session = RnnSession::new(model, &mut arena)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    let line_start = prompt.is_empty() || prompt.ends_with('\n');
    let t = std::time::Instant::now();
    let g = recurrent::generate(&mut session, &tok, &mut sampler, &ids, n, line_start, |b| {
        out.write_all(b).and_then(|_| out.flush())
    })?;
    writeln!(out)?;
    let s = t.elapsed().as_secs_f64();
    eprintln!(
        "prompt: {} {}s | generated {} {}s, {:.1} tokens/s | state {} bytes, kernels {}",
        ids.len(),
        level(&tok),
        g.len(),
        level(&tok),
        (ids.len() + g.len()) as f64 / s.max(1e-9),
        model.config().state_len() * 4,
        model.kernels().name
    );
    Ok(())
}

pub fn next(model: &Rnn<'_>, prompt: &str, top: usize, json_out: bool) -> Result<()> {
    let tok = tokenizer(model)?;
    let ids = prompt_ids(&tok, prompt)?;
    let mut arena = arena(model)?;
    let mut session = RnnSession::new(model, &mut arena)?;
    let rows: Vec<_> = text_jobs::top_tokens(recurrent::prefill(&mut session, &ids)?, top)
        .into_iter()
        .map(|(id, lp)| (id, token_text(&tok, id), lp.exp(), lp))
        .collect();
    if json_out {
        let top: Vec<_> =
            rows.iter().map(|(id, text, p, lp)| json!({"id": id, "token": text, "prob": p, "logprob": lp})).collect();
        println!("{}", json!({"prompt_tokens": ids.len(), "top": top}));
    } else {
        println!("p(x_{} | {} prompt {}s):", ids.len() + 1, ids.len(), level(&tok));
        for (id, text, p, lp) in rows {
            println!("{:>8.4}%  {lp:>9.4}  {id:>6}  {:?}", 100.0 * p, text);
        }
    }
    Ok(())
}

pub fn score(model: &Rnn<'_>, input: &Path, json_out: bool, per_token: bool) -> Result<()> {
    let content = arq_convert::input::read_capped(input, arq_convert::input::MAX_TEXT_BYTES, "the text")?;
    let content = String::from_utf8(content).map_err(|_| anyhow!("{}: not UTF-8 text", input.display()))?;
    let tok = tokenizer(model)?;
    let ids = encode(&tok, &content).map_err(|e| anyhow!("{}: {e}", input.display()))?;
    if ids.len() < 2 {
        bail!("{}: fewer than 2 tokens, nothing to score", input.display());
    }
    let mut arena = arena(model)?;
    let mut session = RnnSession::new(model, &mut arena)?;
    let scored = recurrent::score(&mut session, &ids)?;
    let n = scored.len();
    let nll: f64 = -scored.iter().map(|s| s.logprob).sum::<f64>();
    let ln2 = std::f64::consts::LN_2;
    let ppl = (nll / n as f64).exp();
    let lvl = level(&tok);
    if json_out {
        let mut v = json!({
            "tokens": n,
            "level": lvl,
            "nll_nats": nll,
            "perplexity": ppl,
            "bits_per_token": nll / n as f64 / ln2,
            "first_token_is_condition": true,
        });
        if per_token {
            v["per_token"] = scored
                .iter()
                .map(|s| json!({"pos": s.pos, "id": s.id, "logprob": s.logprob, "top_id": s.top_id, "top_logprob": s.top_logprob}))
                .collect();
        }
        println!("{v}");
    } else {
        if per_token {
            for s in &scored {
                println!("{:>6} {:>6} {:>10.4} {:?}", s.pos, s.id, s.logprob, token_text(&tok, s.id));
            }
        }
        println!(
            "{n} {lvl}s scored after the first (the whole text in one state): NLL {nll:.3} nats, perplexity per {lvl} \
             {ppl:.4}, {:.4} bits/{lvl}",
            nll / n as f64 / ln2
        );
    }
    Ok(())
}

pub fn inspect(model: &Rnn<'_>, path: &Path, file_bytes: usize, json_out: bool) -> Result<()> {
    let c = model.config();
    if let arq::RnnInput::Value { mean, std, k } = c.input {
        let arena = model.memory_plan()?;
        if json_out {
            println!(
                "{}",
                json!({"path": path.display().to_string(), "architecture": arq::format::keys::ARCH_RNN,
                       "cell": c.cell.name(), "layers": c.layers, "hidden_size": c.hidden, "input": "value",
                       "mixtures": k, "norm_mean": mean, "norm_std": std, "params": c.n_params(),
                       "file_bytes": file_bytes, "state_bytes": c.state_len() * 4, "arena_bytes": arena})
            );
        } else {
            println!("{}: series model ({}), {} bytes", path.display(), c.cell.name(), file_bytes);
            println!(
                "  layers {} x hidden {}, a mixture of {k} Gaussians per step, {} parameters",
                c.layers,
                c.hidden,
                c.n_params()
            );
            println!("  normalisation: mean {mean}, std {std}; arena {arena} bytes whatever the series' length");
        }
        return Ok(());
    }
    let tok = tokenizer(model)?;
    let quant = model.file().meta(arq::format::keys::QUANT).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let arena = model.memory_plan()?;
    if json_out {
        println!(
            "{}",
            json!({
                "path": path.display().to_string(),
                "architecture": arq::format::keys::ARCH_RNN,
                "cell": c.cell.name(),
                "layers": c.layers,
                "hidden_size": c.hidden,
                "embedding_length": c.embed,
                "vocab_size": c.vocab,
                "vocabulary": level(&tok),
                "quant": quant,
                "params": c.n_params(),
                "file_bytes": file_bytes,
                "state_bytes": c.state_len() * 4,
                "arena_bytes": arena,
            })
        );
    } else {
        println!("{}: recurrent model ({}), {quant}, {} bytes", path.display(), c.cell.name(), file_bytes);
        println!("  layers {} x hidden {}, embedding {}, {} parameters", c.layers, c.hidden, c.embed, c.n_params());
        println!("  vocabulary: {} {}s", c.vocab, level(&tok));
        println!(
            "  arena: {arena} bytes whatever the text's length (state {} bytes; --ctx does not apply)",
            c.state_len() * 4
        );
    }
    Ok(())
}

/// What `arq bench` measures on a recurrent model.
pub struct BenchArgs {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub json: bool,
}

/// Medians of the measured repetitions: seconds to score the prompt (every step's
/// logits, as `score` needs them) and to generate greedily.
struct StepTimes {
    prompt_s: f64,
    gen_s: f64,
}

/// Prompt ids: the calibration text's tokens repeated to `n`, or, where the vocabulary
/// lacks one of its characters, ids spread over the vocabulary (a step costs the same
/// for every token).
fn bench_ids(model: &Rnn<'_>, n: usize) -> Result<Vec<u32>> {
    let tok = tokenizer(model)?;
    let base = match encode(&tok, arq_convert::report::CALIBRATION_TEXT) {
        Ok(ids) if !ids.is_empty() => ids,
        _ => {
            let v = model.config().vocab;
            (0..v.min(997)).map(|i| ((i * 7919 + 13) % v) as u32).collect()
        }
    };
    Ok(base.iter().copied().cycle().take(n).collect())
}

fn measure(model: &Rnn<'_>, arena: &mut [u8], ids: &[u32], args: &BenchArgs) -> Result<StepTimes> {
    let (mut prompt, mut gen) = (Vec::new(), Vec::new());
    for rep in 0..=args.reps {
        let mut session = RnnSession::new(model, arena)?;
        let t = std::time::Instant::now();
        let scored = recurrent::score(&mut session, ids)?;
        std::hint::black_box(&scored);
        let prompt_s = t.elapsed().as_secs_f64();
        let mut next = arq::math::argmax(session.step(ids[ids.len() - 1])?) as u32;
        let t = std::time::Instant::now();
        for _ in 0..args.gen_tokens {
            next = arq::math::argmax(session.step(next)?) as u32;
        }
        let gen_s = t.elapsed().as_secs_f64();
        // Repetition 0 is the warm-up.
        if rep > 0 {
            prompt.push(prompt_s);
            gen.push(gen_s);
        }
    }
    Ok(StepTimes { prompt_s: super::median(prompt), gen_s: super::median(gen) })
}

/// `arq bench` on a recurrent model: time per step when scoring a prompt (teacher-forced,
/// every step's log-probs) and when generating (greedy), tokens/s, the fixed state and
/// arena, peak RSS; medians over repetitions after a warm-up. One thread: a step's
/// matrices are too small to split.
pub fn bench(model: &Rnn<'_>, path: &Path, load: std::time::Duration, args: &BenchArgs) -> Result<()> {
    if args.prompt_tokens < 2 || args.gen_tokens == 0 || args.reps == 0 {
        bail!("--prompt-tokens must be at least 2, --gen-tokens and --reps at least 1");
    }
    let mut arena = arena(model)?;
    let ids = bench_ids(model, args.prompt_tokens)?;
    let t = measure(model, &mut arena, &ids, args)?;
    // Scoring n tokens takes n - 1 steps (the first token is the condition).
    let prompt_steps = (ids.len() - 1) as f64;
    let (prompt_per_s, gen_per_s) = (prompt_steps / t.prompt_s, args.gen_tokens as f64 / t.gen_s);
    let (state, rss) = (model.config().state_len() * 4, super::text::peak_rss_bytes());
    let load_ms = load.as_secs_f64() * 1e3;
    if args.json {
        let v = json!({
            "model": path.display().to_string(),
            "architecture": "rnn",
            "threads": 1,
            "kernels": model.kernels().name,
            "load_ms": load_ms,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "reps": args.reps,
            "prompt_tokens_per_s": prompt_per_s,
            "gen_tokens_per_s": gen_per_s,
            "prompt_us_per_step": 1e6 / prompt_per_s,
            "gen_us_per_step": 1e6 / gen_per_s,
            "state_bytes": state,
            "arena_bytes": arena.len(),
            "peak_rss_bytes": rss,
        });
        println!("{v}");
        return Ok(());
    }
    println!("{}: recurrent, 1 thread, {} kernels, {} reps (medians)", path.display(), model.kernels().name, args.reps);
    println!("  load             {load_ms:.1} ms");
    println!("  score ({:>4})     {prompt_per_s:.1} tok/s, {:.1} µs/step", args.prompt_tokens, 1e6 / prompt_per_s);
    println!("  generation ({:>3}) {gen_per_s:.1} tok/s, {:.1} µs/step", args.gen_tokens, 1e6 / gen_per_s);
    println!("  state            {state} bytes (arena {} bytes, the same at any length)", arena.len());
    if let Some(r) = rss {
        println!("  peak RSS         {:.1} MiB", r as f64 / 1048576.0);
    }
    Ok(())
}
