//! `arq`: convert models to `.arq`, inspect them, generate, predict and score.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use arq::parallel::{Parallel, ThreadPool};
use arq::sampler::{Candidate, Sampler, SamplerConfig};
use arq::tokenizer::{Tokenizer, Utf8Stream};
use arq::{math, Family, KvDtype, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::convert::{self, ConvertOptions, Quant};
use backend::{BackendArg, BackendOpt};
use clap::{Parser, Subcommand};

mod backend;
mod bench;
mod pixel_cmd;
use serde_json::json;

#[derive(Parser)]
#[command(name = "arq", version, about = "Run quantized autoregressive models on small devices")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a GGUF model (LLaMA family) or an ONNX model (gated PixelCNN, GPT-2) to a
    /// quantized .arq file.
    Convert {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Weight type of the matrices (norms stay f32).
        #[arg(long, value_enum, default_value_t = QuantArg::Q8)]
        quant: QuantArg,
        /// Calibration text file for the accuracy report (default: built-in text).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Skip the calibration run of the accuracy report.
        #[arg(long)]
        no_calib: bool,
        /// Overwrite OUTPUT if it exists.
        #[arg(long)]
        force: bool,
        /// ONNX PixelCNN: the output head, overriding the file's metadata
        /// (categorical, bernoulli, logistic_mixture:K, gaussian_mixture:K).
        #[arg(long)]
        head: Option<String>,
        /// ONNX PixelCNN: discrete levels per pixel, overriding the file's metadata.
        #[arg(long)]
        levels: Option<usize>,
    },
    /// Show a model's hyperparameters, tensors, tokenizer and arena size.
    Inspect {
        model: PathBuf,
        /// Context length for the arena size.
        #[arg(long, default_value_t = 2048)]
        ctx: usize,
        /// Recompute the data checksum.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt, streaming it to stdout.
    Generate {
        model: PathBuf,
        #[arg(short, long, default_value = "")]
        prompt: String,
        /// Tokens to generate.
        #[arg(short = 'n', long, default_value_t = 128)]
        n: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Context length (default: 2048, or the model's if shorter).
        #[arg(long)]
        ctx: Option<usize>,
        /// Wrap the prompt in the model's chat template (a user message).
        #[arg(long)]
        chat: bool,
        #[command(flatten)]
        kv: KvOpt,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        backend: BackendOpt,
    },
    /// Print the next-token distribution p(x_i | x_<i) after a prompt.
    Next {
        model: PathBuf,
        #[arg(short, long)]
        prompt: String,
        /// How many of the most likely tokens to show.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        top: u64,
        #[arg(long)]
        chat: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        kv: KvOpt,
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Exact log-likelihood of a text file: NLL, perplexity, bits/token, bits/byte.
    Score {
        model: PathBuf,
        file: PathBuf,
        /// Window length (default: 2048, or the model's context if shorter); longer
        /// texts are scored in overlapping windows.
        #[arg(long)]
        ctx: Option<usize>,
        #[arg(long)]
        json: bool,
        /// Include every position's log-prob in the output.
        #[arg(long)]
        per_token: bool,
        /// PixelCNN models: include every image's NLL in the output.
        #[arg(long)]
        per_image: bool,
        #[command(flatten)]
        kv: KvOpt,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        backend: BackendOpt,
    },
    /// Sample images from a PixelCNN model into a PNG grid.
    Sample {
        model: PathBuf,
        /// Images to sample.
        #[arg(short = 'n', long, default_value_t = 16)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Temperature on each pixel's distribution; 0 takes the most likely level.
        #[arg(long, default_value_t = 1.0)]
        temp: f32,
        /// The PNG grid to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Grid columns (default: a square grid).
        #[arg(long)]
        cols: Option<usize>,
        /// Pixel magnification (default: tiles of at least 32 pixels).
        #[arg(long)]
        scale: Option<usize>,
        /// Also write the sampled levels as a uint8 .npy file (N, H, W).
        #[arg(long)]
        npy: Option<PathBuf>,
        /// Also print the images as ASCII art on stdout.
        #[arg(long)]
        ascii: bool,
    },
    /// Fill the masked pixels of an image with a PixelCNN model.
    Impute {
        model: PathBuf,
        /// The image (PNG, grey levels mapped onto the model's levels).
        #[arg(long)]
        image: PathBuf,
        /// Same-size PNG: white (>= 128) marks the pixels to fill.
        #[arg(long)]
        mask: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Particles for sequential Monte Carlo (used when observed pixels follow
        /// missing ones).
        #[arg(long, default_value_t = 64)]
        particles: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        temp: f32,
        #[arg(long)]
        json: bool,
    },
    /// Measure load time, prompt and generation tokens/s and peak RSS (text models), or
    /// cached vs naive sampling time per image (PixelCNN models).
    Bench {
        #[arg(required_unless_present = "synthetic")]
        model: Option<PathBuf>,
        /// PixelCNN: benchmark a random-weight model of the digits models' shape at HxW
        /// (e.g. 28x28) instead of a file.
        #[arg(long, conflicts_with = "model")]
        synthetic: Option<String>,
        /// PixelCNN: naive-sampler repetitions (each samples one image).
        #[arg(long, default_value_t = 3)]
        naive_reps: usize,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Measured repetitions (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        backend: BackendOpt,
    },
}

#[derive(clap::Args)]
struct KvOpt {
    /// Text models: KV-cache storage; q8 is 3.8x smaller (what the microcontroller
    /// firmware uses) and not exact.
    #[arg(long, value_enum, default_value_t = KvArg::F32)]
    kv: KvArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KvArg {
    F32,
    Q8,
}

impl From<KvArg> for KvDtype {
    fn from(k: KvArg) -> KvDtype {
        match k {
            KvArg::F32 => KvDtype::F32,
            KvArg::Q8 => KvDtype::Q8,
        }
    }
}

#[derive(clap::Args)]
struct ThreadsArg {
    /// Worker threads (default: the available cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
}

impl ThreadsArg {
    fn count(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
    fn pool(&self) -> Result<ThreadPool> {
        ThreadPool::new(self.count()).context("cannot start worker threads")
    }
}

impl From<QuantArg> for Quant {
    fn from(q: QuantArg) -> Quant {
        match q {
            QuantArg::Q8 => Quant::Q8,
            QuantArg::Q4 => Quant::Q4,
            QuantArg::F32 => Quant::F32,
        }
    }
}

/// The per-matrix quantization errors of a conversion: mean and worst, and with
/// `each`, every matrix.
fn print_tensor_errors(errors: &[(String, f64)], each: bool) {
    if errors.is_empty() {
        return;
    }
    let mean = errors.iter().map(|e| e.1).sum::<f64>() / errors.len() as f64;
    let worst = errors.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(("", 0.0), |e| (e.0.as_str(), e.1));
    eprintln!("per-tensor relative error ({} matrices):", errors.len());
    if each {
        for (name, err) in errors {
            eprintln!("  {name:<24} {err:.5}");
        }
    }
    eprintln!("  mean {mean:.5}, worst {} {:.5}", worst.0, worst.1);
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum QuantArg {
    /// 8-bit matrices.
    Q8,
    /// 4-bit layer matrices; the token embedding and output head stay q8.
    Q4,
    /// Unquantized.
    F32,
}

#[derive(clap::Args)]
struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the K most likely tokens (must be >= 1; omit to disable).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    top_k: Option<u64>,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`arq inspect m.arq | head`) instead of failing on the broken pipe.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; restores the default
    // disposition of one signal, which the Rust runtime set to ignore.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // lavapipe probes for a Wayland display when wgpu opens it, and libwayland prints an
    // error line on a headless machine without XDG_RUNTIME_DIR; give it a directory to look
    // in (and find nothing) so `--backend gpu` output stays clean. Set before any thread.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("arq: internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Convert { input, output, quant, calib, no_calib, force, head, levels } => {
            if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
                cmd_convert_onnx(&input, &output, quant, head.as_deref(), levels, force)
            } else if head.is_some() || levels.is_some() {
                Err(anyhow!("--head and --levels apply to ONNX PixelCNN models only"))
            } else {
                cmd_convert(&input, &output, quant, calib.as_deref(), no_calib, force)
            }
        }
        Cmd::Inspect { model, ctx, verify, json } => cmd_inspect(&model, ctx, verify, json),
        Cmd::Generate { model, prompt, n, sampling, ctx, chat, kv, threads, backend } => {
            cmd_generate(&model, &prompt, n, &sampling, (ctx, kv.kv), chat, &threads, backend.backend)
        }
        Cmd::Next { model, prompt, top, chat, json, kv, threads } => {
            cmd_next(&model, &prompt, top as usize, chat, json, kv.kv, &threads)
        }
        Cmd::Score { model, file, ctx, json, per_token, per_image, kv, threads, backend } => {
            cmd_score(&model, &file, (ctx, kv.kv), json, per_token, per_image, &threads, backend.backend)
        }
        Cmd::Sample { model, n, seed, temp, output, cols, scale, npy, ascii } => with_pixel_model(&model, |m| {
            let args =
                pixel_cmd::SampleArgs { n, seed, temp, output: &output, cols, scale, npy: npy.as_deref(), ascii };
            pixel_cmd::sample(m, &args)
        }),
        Cmd::Impute { model, image, mask, output, particles, seed, temp, json } => with_pixel_model(&model, |m| {
            let args =
                pixel_cmd::ImputeArgs { image: &image, mask: &mask, output: &output, particles, seed, temp, json };
            pixel_cmd::impute(m, &args)
        }),
        Cmd::Bench { model, synthetic, naive_reps, prompt_tokens, gen_tokens, reps, json, threads, backend } => {
            cmd_bench(
                model.as_deref(),
                synthetic.as_deref(),
                naive_reps,
                (prompt_tokens, gen_tokens, reps),
                json,
                &threads,
                backend.backend,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// Opens a PixelCNN `.arq` file and runs `f` on it.
fn with_pixel_model(path: &Path, f: impl FnOnce(&arq::PixelCnn<'_>) -> Result<()>) -> Result<()> {
    let loaded = Loaded::open(path)?;
    if matches!(pixel_cmd::architecture(loaded.bytes.bytes()).as_deref(), Some("llama" | "gpt2")) {
        bail!("{} is a text model; sample and impute take PixelCNN models (use generate)", path.display());
    }
    f(&pixel_cmd::load(&loaded.bytes, path)?)
}

#[allow(clippy::too_many_arguments)]
fn cmd_bench(
    model: Option<&Path>,
    synthetic: Option<&str>,
    naive_reps: usize,
    (prompt_tokens, gen_tokens, reps): (usize, usize, usize),
    json: bool,
    threads: &ThreadsArg,
    backend: BackendArg,
) -> Result<()> {
    let text_only = || -> Result<()> {
        if backend != BackendArg::Cpu {
            bail!("--backend applies to text models; PixelCNN models run on the CPU");
        }
        Ok(())
    };
    if let Some(size) = synthetic {
        text_only()?;
        let (h, w) = pixel_cmd::parse_size(size)?;
        let bytes = pixel_cmd::synthetic_model(h, w);
        let model = arq::PixelCnn::load(bytes.bytes())?;
        return pixel_cmd::bench(&model, &format!("synthetic {h}x{w} (random q8 weights)"), reps, naive_reps, json);
    }
    let Some(path) = model else { bail!("give a MODEL or --synthetic HxW") };
    if path.exists() && pixel_cmd::architecture(ModelBytes::map(path)?.bytes()).as_deref() == Some("pixelcnn") {
        text_only()?;
        return with_pixel_model(path, |m| pixel_cmd::bench(m, &path.display().to_string(), reps, naive_reps, json));
    }
    let pool = threads.pool()?;
    bench::run(path, &bench::BenchArgs { prompt_tokens, gen_tokens, reps, json, backend }, &pool)
}

#[cfg(not(feature = "onnx"))]
fn cmd_convert_onnx(input: &Path, _: &Path, _: QuantArg, _: Option<&str>, _: Option<usize>, _: bool) -> Result<()> {
    bail!("{}: this arq was built without ONNX import (cargo feature `onnx`)", input.display())
}

#[cfg(feature = "onnx")]
fn cmd_convert_onnx(
    input: &Path,
    output: &Path,
    quant: QuantArg,
    head: Option<&str>,
    levels: Option<usize>,
    force: bool,
) -> Result<()> {
    use arq_convert::import::onnx::{convert_onnx, onnx_architecture, HeadSpec, OnnxConvertOptions};
    let quant = Quant::from(quant);
    if (head.is_some() || levels.is_some()) && onnx_architecture(input)?.as_deref() == Some("gpt2") {
        bail!("{}: --head and --levels apply to PixelCNN models; this is a gpt2 text model", input.display());
    }
    let head = match (head, levels) {
        (Some(h), l) => Some(HeadSpec { levels: l.or(h.parse::<HeadSpec>()?.levels), ..h.parse::<HeadSpec>()? }),
        (None, Some(_)) => bail!("--levels needs --head"),
        (None, None) => None,
    };
    let t0 = Instant::now();
    let s = convert_onnx(input, output, &OnnxConvertOptions { quant, force, head })?;
    eprintln!("{}", s.description);
    eprintln!(
        "wrote {} ({} bytes, {}) in {:.2} s",
        output.display(),
        s.bytes,
        quant.name(),
        t0.elapsed().as_secs_f64()
    );
    print_tensor_errors(&s.tensor_errors, false);
    Ok(())
}

fn cmd_convert(
    input: &Path,
    output: &Path,
    quant: QuantArg,
    calib: Option<&Path>,
    no_calib: bool,
    force: bool,
) -> Result<()> {
    let quant = Quant::from(quant);
    let calib = match calib {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read calibration text {}", p.display()))?)
        }
        None => None,
    };
    let t0 = Instant::now();
    let opts = ConvertOptions { quant, force, calib, skip_calibration: no_calib, progress: true };
    let s = convert::convert(input, output, &opts)?;
    eprintln!(
        "wrote {} ({} bytes, {}) in {:.1} s",
        output.display(),
        s.bytes,
        quant.name(),
        t0.elapsed().as_secs_f64()
    );
    print_tensor_errors(&s.tensor_errors, true);
    if let Some(a) = s.accuracy {
        eprintln!(
            "calibration ({} tokens) vs unquantized: KL {:.5} nats/token, top-1 agreement {:.2}%, perplexity {:.3} (unquantized {:.3}, {:+.2}%)",
            a.tokens,
            a.kl_mean,
            100.0 * a.top1_agreement,
            a.ppl_quantized,
            a.ppl_reference,
            100.0 * (a.ppl_quantized / a.ppl_reference - 1.0)
        );
    }
    Ok(())
}

/// A mapped model and the tokenizer inside it.
struct Loaded {
    bytes: ModelBytes,
}

impl Loaded {
    fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("{}: no such file", path.display());
        }
        Ok(Loaded { bytes: ModelBytes::map(path)? })
    }
    fn model(&self, path: &Path) -> Result<Model<'_>> {
        if pixel_cmd::architecture(self.bytes.bytes()).as_deref() == Some("pixelcnn") {
            bail!(
                "{} is a PixelCNN image model; this command takes text models (see sample, score, impute)",
                path.display()
            );
        }
        Model::load(self.bytes.bytes()).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

fn tokenizer<'a>(model: &Model<'a>) -> Result<Tokenizer<'a>> {
    model.tokenizer().map_err(|e| anyhow!("tokenizer: {e}"))
}

fn token_text(tok: &Tokenizer<'_>, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id).unwrap_or(b"")).into_owned()
}

/// The prompt's token ids: the chat template (with special tokens) or plain text, with
/// BOS when the model asks for it.
fn encode_prompt(model: &Model<'_>, tok: &Tokenizer<'_>, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let file = model.file();
    let mut ids = Vec::new();
    let add_bos = file.meta("tokenizer.add_bos").and_then(|v| v.as_bool()).unwrap_or(false);
    let bos = file.meta("tokenizer.bos_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    if chat {
        let template = file
            .meta("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("--chat: this model has no chat template"))?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template).map_err(|e| anyhow!("chat template: {e}"))?;
        let text = env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => vec![minijinja::context! { role => "user", content => prompt }],
                    add_generation_prompt => true,
                })
            })
            .map_err(|e| anyhow!("chat template: {e}"))?;
        ids.extend(tok.encode(&text, true));
    } else {
        if add_bos {
            ids.extend(bos);
        }
        ids.extend(tok.encode(prompt, false));
    }
    if ids.is_empty() {
        // An empty prompt starts from BOS (or the first control token) so there is a condition.
        ids.push(bos.unwrap_or(0));
    }
    Ok(ids)
}

fn session_config(model: &Model<'_>, ctx: Option<usize>, kv: KvArg, pool: &ThreadPool) -> Result<SessionConfig> {
    let train = model.config().ctx_train;
    let ctx = ctx.unwrap_or(train.min(2048));
    if ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    if ctx > train {
        bail!("--ctx {ctx} is longer than the model's training context ({train})");
    }
    Ok(SessionConfig { ctx, batch: 32, threads: pool.threads(), kv: kv.into() })
}

fn new_arena(model: &Model<'_>, cfg: &SessionConfig) -> Result<Vec<u8>> {
    Ok(vec![0u8; model.memory_plan(cfg)?])
}

#[allow(clippy::too_many_arguments)]
fn cmd_generate(
    path: &Path,
    prompt: &str,
    n: usize,
    s: &SamplingArgs,
    (ctx, kv): (Option<usize>, KvArg),
    chat: bool,
    threads: &ThreadsArg,
    backend: BackendArg,
) -> Result<()> {
    let pool = threads.pool()?;
    let sampler_cfg = SamplerConfig {
        temperature: s.temp,
        top_k: s.top_k.unwrap_or(0) as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: 64,
        seed: s.seed,
    };
    let mut sampler = Sampler::new(sampler_cfg).map_err(|e| anyhow!("{e}"))?;
    let loaded = Loaded::open(path)?;
    let model = loaded.model(path)?;
    let tok = tokenizer(&model)?;
    let cfg = session_config(&model, ctx, kv, &pool)?;
    let ids = encode_prompt(&model, &tok, prompt, chat)?;
    if ids.len() >= cfg.ctx {
        bail!("prompt is {} tokens, longer than the context ({}); raise --ctx or shorten it", ids.len(), cfg.ctx);
    }
    let eos = model.file().meta("tokenizer.eos_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    let backend = backend::open(backend, &model, &cfg, &pool)?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    session.set_offload(backend.offload())?;
    let mut scratch = vec![Candidate::default(); model.config().vocab];
    let mut history = ids.clone();

    let out = std::io::stdout();
    let mut out = out.lock();
    if !chat {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let t0 = Instant::now();
    let mut logits = session.prefill(&ids)?.to_vec();
    let prompt_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut stream = Utf8Stream::new();
    let mut generated = 0;
    let mut stop_reason = "length";
    while generated < n {
        let next = sampler.sample(&mut logits, &history, &mut scratch).map_err(|e| anyhow!("{e}"))?;
        if Some(next) == eos || tok.is_control(next) {
            stop_reason = "end of text";
            break;
        }
        generated += 1;
        history.push(next);
        let mut io_err = None;
        stream.push(tok.token_bytes(next).unwrap_or(b""), |s| {
            if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                io_err = Some(e);
            }
        });
        if let Some(e) = io_err {
            return Err(e.into());
        }
        if generated == n {
            break;
        }
        if session.pos() >= cfg.ctx {
            stop_reason = "context full";
            break;
        }
        logits.copy_from_slice(session.step(next)?);
    }
    stream.flush(|s| {
        let _ = out.write_all(s.as_bytes());
    });
    writeln!(out)?;
    let gen_s = t1.elapsed().as_secs_f64();
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s ({stop_reason}) | kernels: {}, threads: {}, backend: {}",
        ids.len(),
        ids.len() as f64 / prompt_s,
        generated,
        if generated > 0 { generated as f64 / gen_s } else { 0.0 },
        model.kernels().name,
        pool.threads(),
        backend.describe()
    );
    Ok(())
}

fn cmd_next(
    path: &Path,
    prompt: &str,
    top: usize,
    chat: bool,
    json_out: bool,
    kv: KvArg,
    threads: &ThreadsArg,
) -> Result<()> {
    let pool = threads.pool()?;
    let loaded = Loaded::open(path)?;
    let model = loaded.model(path)?;
    let tok = tokenizer(&model)?;
    let ids = encode_prompt(&model, &tok, prompt, chat)?;
    let cfg = session_config(&model, Some(ids.len().max(1)), kv, &pool)
        .map_err(|_| anyhow!("prompt is {} tokens, longer than the model's context", ids.len()))?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    let logits = session.prefill(&ids)?;
    let lse = math::log_sum_exp(logits);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(order.len());
    order.select_nth_unstable_by(top - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order.truncate(top);
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let rows: Vec<_> = order
        .iter()
        .map(|&id| {
            let lp = logits[id as usize] as f64 - lse;
            (id, token_text(&tok, id), lp.exp(), lp)
        })
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

/// One scored position.
struct Scored {
    pos: usize,
    id: u32,
    logprob: f64,
    top_id: u32,
    top_logprob: f64,
}

#[allow(clippy::too_many_arguments)]
fn cmd_score(
    path: &Path,
    file: &Path,
    (ctx, kv): (Option<usize>, KvArg),
    json_out: bool,
    per_token: bool,
    per_image: bool,
    threads: &ThreadsArg,
    backend: BackendArg,
) -> Result<()> {
    {
        let loaded = Loaded::open(path)?;
        if pixel_cmd::architecture(loaded.bytes.bytes()).as_deref() == Some("pixelcnn") {
            if backend != BackendArg::Cpu {
                bail!("--backend applies to text models; PixelCNN models run on the CPU");
            }
            if kv != KvArg::F32 {
                bail!("--kv applies to text models");
            }
            let model = pixel_cmd::load(&loaded.bytes, path)?;
            return pixel_cmd::score(&model, file, json_out, per_image, threads.count());
        }
    }
    let pool = threads.pool()?;
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8(text).map_err(|_| anyhow!("{}: not UTF-8 text", file.display()))?;
    let loaded = Loaded::open(path)?;
    let model = loaded.model(path)?;
    let tok = tokenizer(&model)?;
    let cfg = session_config(&model, ctx, kv, &pool)?;
    if cfg.ctx < 2 {
        bail!("--ctx must be at least 2 to score");
    }
    let add_bos = model.file().meta("tokenizer.add_bos").and_then(|v| v.as_bool()).unwrap_or(false);
    let bos = model.file().meta("tokenizer.bos_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    let mut ids = Vec::new();
    if add_bos {
        ids.extend(bos);
    }
    ids.extend(tok.encode(&text, false));
    if ids.len() < 2 {
        bail!("{}: fewer than 2 tokens, nothing to score", file.display());
    }

    // Windows of `ctx` tokens advancing by `stride`; each scores only positions that no
    // earlier window scored, conditioned on up to ctx-1 preceding tokens.
    let stride = (cfg.ctx / 2).max(1);
    let backend = backend::open(backend, &model, &cfg, &pool)?;
    let mut arena = new_arena(&model, &cfg)?;
    let mut session = Session::new(&model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    session.set_offload(backend.offload())?;
    let mut scored: Vec<Scored> = Vec::with_capacity(ids.len());
    let mut next_unscored = 1; // position 0 is the condition
    let mut start = 0;
    let mut windows = 0;
    loop {
        let end = (start + cfg.ctx).min(ids.len());
        let window = &ids[start..end];
        session.reset();
        session.forward_all(window, |i, logits| {
            let target = start + i + 1;
            if target < end && target >= next_unscored {
                let lse = math::log_sum_exp(logits);
                let id = ids[target];
                let top = math::argmax(logits);
                scored.push(Scored {
                    pos: target,
                    id,
                    logprob: logits[id as usize] as f64 - lse,
                    top_id: top as u32,
                    top_logprob: logits[top] as f64 - lse,
                });
            }
        })?;
        windows += 1;
        next_unscored = end;
        if end == ids.len() {
            break;
        }
        start += stride;
    }
    let n = scored.len();
    let nll: f64 = -scored.iter().map(|s| s.logprob).sum::<f64>();
    let bytes: usize = scored.iter().map(|s| tok.token_bytes(s.id).map_or(0, |b| b.len())).sum();
    let ln2 = std::f64::consts::LN_2;
    let ppl = (nll / n as f64).exp();
    if json_out {
        let mut v = json!({
            "tokens": n,
            "nll_nats": nll,
            "perplexity": ppl,
            "bits_per_token": nll / n as f64 / ln2,
            "bits_per_byte": nll / ln2 / bytes.max(1) as f64,
            "bytes": bytes,
            "bos_added": add_bos,
            "windows": {"count": windows, "ctx": cfg.ctx, "stride": stride},
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
            "{n} tokens scored ({} windows of {}): NLL {nll:.3} nats, perplexity {ppl:.4}, {:.4} bits/token, {:.4} bits/byte",
            windows,
            cfg.ctx,
            nll / n as f64 / ln2,
            nll / ln2 / bytes.max(1) as f64
        );
    }
    Ok(())
}

/// `inspect --json`'s tensor list.
fn tensors_json(tensors: &[arq::format::TensorView<'_>]) -> Vec<serde_json::Value> {
    tensors
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape.dims(), "bytes": t.data.len()}))
        .collect()
}

/// `inspect`'s tensor table.
fn print_tensors(tensors: &[arq::format::TensorView<'_>]) {
    for t in tensors {
        let shape = format!("{:?}", t.shape.dims());
        println!("    {:<24} {:<4} {:<16} {:>10} bytes", t.name, t.dtype.name(), shape, t.data.len());
    }
}

fn cmd_inspect(path: &Path, ctx: usize, verify: bool, json_out: bool) -> Result<()> {
    let loaded = Loaded::open(path)?;
    let bytes = loaded.bytes.bytes();
    let file = arq::format::ArqFile::parse(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if verify {
        file.verify_checksum().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    if file.meta("arq.architecture").and_then(|v| v.as_str()) == Some("pixelcnn") {
        let model = arq::PixelCnn::from_file(file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        return pixel_cmd::inspect(&model, path, bytes.len(), verify, json_out);
    }
    let model = Model::from_file(file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let c = *model.config();
    let tok = tokenizer(&model)?;
    let plan_cfg = SessionConfig { ctx, batch: 32, threads: 1, ..Default::default() };
    let arena = model.memory_plan(&plan_cfg)?;
    let kv = 2 * c.n_layers * ctx * c.kv_dim() * 4;
    let meta_str = |k: &str| file.meta(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    // GPT-2 files carry the pre-tokenizer only in the tokenizer tables.
    let pre = match meta_str("tokenizer.pre") {
        p if !p.is_empty() => p,
        _ => match tok.pre_tokenizer() {
            arq::tokenizer::PreTokenizer::Gpt2 => "gpt2".into(),
            arq::tokenizer::PreTokenizer::Smollm => "smollm".into(),
            _ => "?".into(),
        },
    };
    let meta_id = |k: &str| file.meta(k).and_then(|v| v.as_u64());
    let tensors: Vec<_> = file.tensors().collect();
    if json_out {
        let meta: serde_json::Map<String, serde_json::Value> = file
            .meta_iter()
            .map(|(k, v)| {
                let j = match v {
                    arq::format::MetaValue::U32(x) => json!(x),
                    arq::format::MetaValue::I32(x) => json!(x),
                    arq::format::MetaValue::F32(x) => json!(x),
                    arq::format::MetaValue::U64(x) => json!(x),
                    arq::format::MetaValue::Bool(x) => json!(x),
                    arq::format::MetaValue::Str(x) => json!(x),
                };
                (k.to_string(), j)
            })
            .collect();
        let t = tensors_json(&tensors);
        println!(
            "{}",
            json!({
                "file_bytes": bytes.len(),
                "architecture": c.family.name(),
                "quant": meta_str("arq.quant"),
                "hyperparameters": {
                    "vocab": c.vocab, "dim": c.dim, "layers": c.n_layers, "heads": c.n_heads,
                    "kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "ffn_dim": c.ffn_dim,
                    "rope_base": c.rope_base, "norm_eps": c.norm_eps, "context_length": c.ctx_train,
                    "tied_embeddings": model.tied_embeddings(),
                },
                "tokenizer": {"vocab": tok.vocab_size(), "bos_id": meta_id("tokenizer.bos_id"), "eos_id": meta_id("tokenizer.eos_id"),
                              "pre": pre, "chat_template": !meta_str("tokenizer.chat_template").is_empty()},
                "arena": {"ctx": ctx, "batch": plan_cfg.batch, "bytes": arena, "kv_cache_bytes": kv},
                "checksum_verified": verify,
                "metadata": meta,
                "tensors": t,
            })
        );
        return Ok(());
    }
    println!("{}: {} bytes, {}, {} weights", path.display(), bytes.len(), c.family.name(), meta_str("arq.quant"));
    println!("  name           {}", meta_str("general.name"));
    println!(
        "  dims           vocab {} | dim {} | layers {} | heads {} (kv {}) x {} | ffn {}",
        c.vocab, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim
    );
    match c.family {
        Family::Llama => println!(
            "  rope base {} | rms eps {:e} | trained context {} | tied embeddings {}",
            c.rope_base,
            c.norm_eps,
            c.ctx_train,
            model.tied_embeddings()
        ),
        Family::Gpt2 => println!(
            "  learned positions {} | layer norm eps {:e} | tied embeddings {}",
            c.ctx_train,
            c.norm_eps,
            model.tied_embeddings()
        ),
    }
    println!(
        "  tokenizer      byte-level BPE ({pre}), {} tokens, bos {:?}, eos {:?}, chat template: {}",
        tok.vocab_size(),
        meta_id("tokenizer.bos_id"),
        meta_id("tokenizer.eos_id"),
        if meta_str("tokenizer.chat_template").is_empty() { "no" } else { "yes" }
    );
    println!("  arena          {arena} bytes for ctx {ctx} (KV cache {kv}, batch {})", plan_cfg.batch);
    if verify {
        println!("  checksum       ok");
    }
    println!("  tensors        {}", tensors.len());
    print_tensors(&tensors);
    Ok(())
}
