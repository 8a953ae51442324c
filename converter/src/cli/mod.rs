//! The `arq` command line: the clap definition of every command, the dispatch, and the
//! one place that opens a model file and refuses the kind a command does not take.
//! Each command family parses and prints in its own module; the work is the library's.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use arq::parallel::ThreadPool;
use arq::{KvDtype, Model, PixelCnn, PixelGraph, Rnn};
use arq_convert::model::{Kind, Loaded, ModelFile};
use arq_convert::quantize::Quant;
use backend::{BackendArg, BackendOpt};
use clap::{Parser, Subcommand};

mod backend;
mod bandwidth;
mod convert;
mod inspect;
mod pixel;
mod rnn;
mod series;
mod text;
mod tune;

#[derive(Parser)]
#[command(name = "arq", version, about = "Run quantized autoregressive models on small devices")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}
#[derive(Subcommand)]
enum Cmd {
    /// Convert a GGUF model (LLaMA family) or an ONNX model (gated PixelCNN, GPT-2,
    /// LSTM/GRU) to a quantized .arq file.
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
        /// ONNX LSTM/GRU: the vocabulary the graph lacks, a JSON file
        /// {"level": "word"|"char", "tokens": [...]} with the tokens in id order.
        #[arg(long)]
        vocab: Option<PathBuf>,
    },
    /// Serve a model over HTTP: the OpenAI API and arq's own calls for text models,
    /// sampling and inpainting for PixelCNNs, and a web page at `/`.
    #[cfg(feature = "serve")]
    Serve {
        model: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free one; the server prints it).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Requests served at once, each with its own KV cache (1 to 64).
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Context per slot (default: 2048, or the model's if shorter).
        #[arg(long, value_parser = capped(MAX_CTX))]
        ctx: Option<usize>,
        /// Requests that may wait for a slot; more are answered 503.
        #[arg(long, default_value_t = 64)]
        queue: usize,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = 8 << 20, value_parser = capped(1 << 30))]
        max_body: usize,
        /// Largest max_tokens a request may ask for.
        #[arg(long, default_value_t = 4096, value_parser = capped(MAX_CTX))]
        max_tokens: usize,
        /// Seconds a request may run.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
        timeout: u64,
        #[command(flatten)]
        kv: KvOpt,
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Show a model's hyperparameters, tensors, tokenizer and arena size.
    Inspect {
        model: PathBuf,
        /// Context length for the arena size (at most 2^24, the runtime's cap).
        #[arg(long, default_value_t = 2048, value_parser = capped(MAX_CTX))]
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
        /// Read the prompt from FILE (`-`: standard input) instead of `-p`.
        #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "prompt")]
        prompt_file: Option<PathBuf>,
        /// Tokens to generate (at most 2^24); a full context is shifted (its last half kept).
        #[arg(short = 'n', long, default_value_t = 128, value_parser = capped(MAX_CTX))]
        n: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Context length (default: 2048, or the model's if shorter).
        #[arg(long, value_parser = capped(MAX_CTX))]
        ctx: Option<usize>,
        /// Wrap the prompt in the model's chat template (a user message).
        #[arg(long)]
        chat: bool,
        /// Chat on standard input, a user message a line (`-p`: the first one); the KV
        /// cache stays between turns.
        #[arg(long, conflicts_with_all = ["prompt_file", "chat"])]
        interactive: bool,
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
        #[arg(short, long, required_unless_present = "prompt_file")]
        prompt: Option<String>,
        /// Read the prompt from FILE (`-`: standard input) instead of `-p`.
        #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "prompt")]
        prompt_file: Option<PathBuf>,
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
    /// Exact log-likelihood of a text file (`-`: standard input): NLL, perplexity,
    /// bits/token, bits/byte.
    Score {
        model: PathBuf,
        file: PathBuf,
        /// Window length (default: 2048, or the model's context if shorter); longer
        /// texts are scored in overlapping windows.
        #[arg(long, value_parser = capped(MAX_CTX))]
        ctx: Option<usize>,
        /// Text models: each window starts this many tokens after the previous one
        /// (1..=ctx; default ctx/2). Every position is scored once, in the first window
        /// that holds it with --min-context tokens before it.
        #[arg(long, value_parser = capped(MAX_CTX))]
        stride: Option<usize>,
        /// Text models: score a position only with at least this many tokens before it
        /// in its window (default 0). `--stride C --min-context C/2+1` scores the
        /// positions llama-perplexity scores at -c C.
        #[arg(long, default_value_t = 0, value_parser = capped(MAX_CTX))]
        min_context: usize,
        #[arg(long)]
        json: bool,
        /// Include every position's log-prob in the output (series models: every step's
        /// log density and anomaly flag).
        #[arg(long, visible_alias = "per-step")]
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
    /// Continue a real-valued series (CSV, its last column) with a series model: sample
    /// paths, their quantile bands and a PNG fan chart.
    Forecast {
        model: PathBuf,
        series: PathBuf,
        /// Steps to forecast (at most 4096).
        #[arg(short = 'n', long, default_value_t = 24, value_parser = capped(MAX_HORIZON))]
        n: usize,
        /// Sample paths (at most 65536).
        #[arg(long, default_value_t = 200, value_parser = capped(MAX_PARTICLES))]
        samples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The PNG fan chart to write.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Sample images from a PixelCNN model into a PNG grid.
    Sample {
        model: PathBuf,
        /// Images to sample (at most 4096).
        #[arg(short = 'n', long, default_value_t = 16, value_parser = capped(MAX_IMAGES))]
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
        #[arg(long, value_parser = capped(MAX_IMAGES))]
        cols: Option<usize>,
        /// Pixel magnification (default: tiles of at least 32 pixels; at most 1024, and
        /// the grid at most 16384 pixels a side).
        #[arg(long, value_parser = capped(MAX_SCALE))]
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
        /// missing ones; at most 65536).
        #[arg(long, default_value_t = 64, value_parser = capped(MAX_PARTICLES))]
        particles: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        temp: f32,
        #[arg(long)]
        json: bool,
    },
    /// Time the decode step of a text model under each kernel setting this CPU runs
    /// (prefetch distance, the tier of one-token products) and cache the fastest for
    /// this CPU model; every arq command then uses it (results are bit-identical).
    Tune {
        model: PathBuf,
        /// Rounds over all candidates (after one warm-up; at most 1000); medians decide.
        #[arg(long, default_value_t = 5, value_parser = capped(MAX_REPS))]
        rounds: usize,
        #[arg(long)]
        json: bool,
        /// Measure and print, but do not write the cache.
        #[arg(long)]
        no_save: bool,
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Measure load time, prompt and generation tokens/s and peak RSS (text models), or
    /// cached vs naive sampling time per image (PixelCNN models).
    Bench {
        #[arg(required_unless_present_any = ["synthetic", "bandwidth"])]
        model: Option<PathBuf>,
        /// Measure the memory read bandwidth (1 GiB streamed by --threads threads), the
        /// ceiling of decode speed, instead of a model.
        #[arg(long, conflicts_with_all = ["model", "synthetic"])]
        bandwidth: bool,
        /// PixelCNN: benchmark a random-weight model of the digits models' shape at HxW
        /// (e.g. 28x28) instead of a file.
        #[arg(long, conflicts_with = "model")]
        synthetic: Option<String>,
        /// PixelCNN: naive-sampler repetitions (each samples one image; at most 1000).
        #[arg(long, default_value_t = 3, value_parser = capped(MAX_REPS))]
        naive_reps: usize,
        /// Text models: prompt length (at most 2^24, and with --gen-tokens within the
        /// model's context).
        #[arg(long, default_value_t = 128, value_parser = capped(MAX_CTX))]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64, value_parser = capped(MAX_CTX))]
        gen_tokens: usize,
        /// Measured repetitions (after one warm-up; at most 1000); medians are reported.
        #[arg(long, default_value_t = 5, value_parser = capped(MAX_REPS))]
        reps: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        backend: BackendOpt,
        #[command(flatten)]
        kv: KvOpt,
    },
}

/// Caps on the flags that size an allocation or a loop, checked by clap before anything
/// runs (exit code 2, naming the value and the range). Far above any real use; without
/// them `sample --scale 100000` asked for 640 GB and `impute --particles 10000000` for
/// 3.7 GB before aborting.
///
/// The runtime's cap on a model's context length.
const MAX_CTX: usize = 1 << 24;
/// Images one `sample` makes (each is sampled pixel by pixel, seconds for thousands).
const MAX_IMAGES: usize = 4096;
/// `--scale`: pixels a side per image pixel; the grid is also capped (see `pixel.rs`).
const MAX_SCALE: usize = 1024;
/// SMC particles: each holds an image and a session's cache, about 370 bytes at 28x28.
const MAX_PARTICLES: usize = 1 << 16;
/// Benchmark repetitions.
const MAX_REPS: usize = 1000;
/// Forecast steps.
const MAX_HORIZON: usize = 4096;

/// A clap parser for a count of at most `max` (0 is left to the commands, which name
/// the flag in their own message).
fn capped(max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(..=max as u64)
}

#[derive(clap::Args)]
pub struct KvOpt {
    /// Text models: KV-cache storage; f16 is half the bytes (llama.cpp's default; long
    /// contexts decode faster), q8 3.8x smaller (what the microcontroller firmware
    /// uses); neither is exact.
    #[arg(long, value_enum, default_value_t = KvArg::F32)]
    pub kv: KvArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvArg {
    F32,
    F16,
    Q8,
}

impl From<KvArg> for KvDtype {
    fn from(k: KvArg) -> KvDtype {
        match k {
            KvArg::F32 => KvDtype::F32,
            KvArg::Q8 => KvDtype::Q8,
            KvArg::F16 => KvDtype::F16,
        }
    }
}

#[derive(clap::Args)]
pub struct ThreadsArg {
    /// Worker threads (default: the available cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
}

impl ThreadsArg {
    pub fn count(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
    pub fn pool(&self) -> Result<ThreadPool> {
        ThreadPool::new(self.count()).context("cannot start worker threads")
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum QuantArg {
    /// 8-bit matrices.
    Q8,
    /// 4-bit layer matrices; the token embedding and output head stay q8.
    Q4,
    /// Unquantized.
    F32,
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

#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the K most likely tokens (must be >= 1; omit to disable).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: Option<u64>,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs the command.
pub fn run(cli: Cli) -> Result<()> {
    arq_convert::tune::apply()?;
    match cli.cmd {
        Cmd::Convert { input, output, quant, calib, no_calib, force, head, levels, vocab } => {
            let opts = arq_convert::ConvertOptions {
                quant: quant.into(),
                force,
                calib,
                skip_calibration: no_calib,
                progress: true,
                head,
                levels,
                vocab,
            };
            convert::run(&input, &output, &opts)
        }
        Cmd::Inspect { model, ctx, verify, json } => inspect::run(&model, ctx, verify, json),
        #[cfg(feature = "serve")]
        Cmd::Serve { model, host, port, slots, ctx, queue, max_body, max_tokens, timeout, kv, threads } => {
            let opts = arq_convert::serve::Options {
                host,
                port,
                slots,
                ctx,
                kv: kv.kv.into(),
                threads: threads.count(),
                queue,
                max_body,
                max_tokens,
                timeout: std::time::Duration::from_secs(timeout),
            };
            arq_convert::serve::run(&model, &opts)
        }
        Cmd::Generate { model, prompt, prompt_file, n, sampling, ctx, chat, interactive, kv, threads, backend } => {
            if let Some(m) = recurrent_file(&model)? {
                rnn::refuse_flags(ctx, kv.kv, backend.backend, chat || interactive)?;
                let r = recurrent_model(&m)?;
                if r.head().is_some() {
                    bail!("{} is a series model; use forecast to continue a series", model.display());
                }
                return rnn::generate(&r, &prompt_text(Some(prompt), prompt_file)?, n, &sampling);
            }
            let prompt = prompt_text(Some(prompt), prompt_file)?;
            let args = text::GenerateArgs { prompt: &prompt, n, sampling: &sampling, ctx, chat, kv: kv.kv };
            if interactive {
                return text::interactive(&model, &args, &threads, backend.backend);
            }
            text::generate(&model, &args, &threads, backend.backend)
        }
        Cmd::Next { model, prompt, prompt_file, top, chat, json, kv, threads } => {
            if let Some(m) = recurrent_file(&model)? {
                rnn::refuse_flags(None, kv.kv, BackendArg::Cpu, chat)?;
                let r = recurrent_model(&m)?;
                if r.head().is_some() {
                    let Some(csv) = prompt_file else { bail!("a series model's next reads the series: -f SERIES.csv") };
                    return series::next(&r, &csv, json);
                }
                return rnn::next(&r, &prompt_text(prompt, prompt_file)?, top as usize, json);
            }
            let prompt = prompt_text(prompt, prompt_file)?;
            text::next(&model, &prompt, top as usize, (chat, json), kv.kv, &threads)
        }
        Cmd::Score { model, file, ctx, stride, min_context, json, per_token, per_image, kv, threads, backend } => {
            let windowed = stride.is_some() || min_context > 0;
            let m = ModelFile::open(&model)?;
            if windowed && m.kind() != Some(Kind::Text) {
                bail!("--stride and --min-context apply to text models only");
            }
            if m.kind() == Some(Kind::Pixel) {
                refuse_text_flags(backend.backend, kv.kv)?;
                return match pixel_model(&m)? {
                    PixelModel::Cnn(p) => pixel::score(&*p, &file, json, per_image, threads.count()),
                    PixelModel::Graph(g) => pixel::score(&*g, &file, json, per_image, threads.count()),
                };
            }
            if m.kind() == Some(Kind::Recurrent) {
                rnn::refuse_flags(ctx, kv.kv, backend.backend, false)?;
                let r = recurrent_model(&m)?;
                if r.head().is_some() {
                    return series::score(&r, &file, json, per_token);
                }
                return rnn::score(&r, &file, json, per_token);
            }
            let windows = arq_convert::text::Windows { stride, min_context };
            let args = text::ScoreArgs { ctx, windows, kv: kv.kv, json, per_token };
            text::score(&m, &file, &args, &threads, backend.backend)
        }
        Cmd::Forecast { model, series: csv, n, samples, seed, output, json } => {
            let m = ModelFile::open(&model)?;
            if m.kind() != Some(Kind::Recurrent) {
                bail!("{}: forecast takes a series model (an LSTM with a Gaussian-mixture head)", model.display());
            }
            let args = series::ForecastArgs { n, samples, seed, output: &output, json };
            series::forecast(&recurrent_model(&m)?, &csv, &args)
        }
        Cmd::Sample { model, n, seed, temp, output, cols, scale, npy, ascii } => {
            let args = pixel::SampleArgs { n, seed, temp, output: &output, cols, scale, npy: npy.as_deref(), ascii };
            match pixel_model(&ModelFile::open(&model)?)? {
                PixelModel::Cnn(p) => pixel::sample(&*p, &args),
                PixelModel::Graph(g) => pixel::sample(&*g, &args),
            }
        }
        Cmd::Impute { model, image, mask, output, particles, seed, temp, json } => {
            let args = pixel::ImputeArgs { image: &image, mask: &mask, output: &output, particles, seed, temp, json };
            match pixel_model(&ModelFile::open(&model)?)? {
                PixelModel::Cnn(p) => pixel::impute(&*p, &args),
                PixelModel::Graph(g) => pixel::impute(&*g, &args),
            }
        }
        Cmd::Tune { model, rounds, json, no_save, threads } => {
            let file = ModelFile::open(&model)?;
            let pool = threads.pool()?;
            let args = tune::TuneArgs { rounds, json, save: !no_save };
            tune::run(&text_model(&file)?, &model.display().to_string(), &pool, &args)
        }
        Cmd::Bench {
            model,
            bandwidth,
            synthetic,
            naive_reps,
            prompt_tokens,
            gen_tokens,
            reps,
            json,
            threads,
            backend,
            kv,
        } => {
            if bandwidth {
                return self::bandwidth::run(threads.count(), json);
            }
            let pixel = pixel::BenchArgs { reps, naive_reps, json };
            if let Some(size) = synthetic {
                refuse_text_flags(backend.backend, kv.kv)?;
                return pixel::bench_synthetic(&size, &pixel);
            }
            let Some(path) = model else { bail!("give a MODEL or --synthetic HxW") };
            // Mapping the file is part of a text model's load time.
            let t0 = Instant::now();
            let file = ModelFile::open(&path)?;
            let map = t0.elapsed();
            if file.kind() == Some(Kind::Pixel) {
                refuse_text_flags(backend.backend, kv.kv)?;
                let label = path.display().to_string();
                return match pixel_model(&file)? {
                    PixelModel::Cnn(p) => pixel::bench(&*p, &label, &pixel),
                    PixelModel::Graph(g) => pixel::bench(&*g, &label, &pixel),
                };
            }
            if file.kind() == Some(Kind::Recurrent) {
                rnn::refuse_flags(None, kv.kv, backend.backend, false)?;
                let model = recurrent_model(&file)?;
                let args = rnn::BenchArgs { prompt_tokens, gen_tokens, reps, json };
                return rnn::bench(&model, &path, t0.elapsed(), &args);
            }
            let pool = threads.pool()?;
            let args =
                text::BenchArgs { prompt_tokens, gen_tokens, reps, json, backend: backend.backend, kv: kv.kv.into() };
            text::bench(&file, map, &args, &pool)
        }
    }
}

/// Refuses the flags that only text models take, for a PixelCNN model.
/// The prompt of `-p TEXT`, or of `-f FILE` (`-`: standard input) when given.
fn prompt_text(prompt: Option<String>, file: Option<PathBuf>) -> Result<String> {
    match file {
        Some(path) => arq_convert::input::read_prompt(&path),
        None => Ok(prompt.unwrap_or_default()),
    }
}

fn refuse_text_flags(backend: BackendArg, kv: KvArg) -> Result<()> {
    if backend != BackendArg::Cpu {
        bail!("--backend applies to text models; PixelCNN models run on the CPU");
    }
    if kv != KvArg::F32 {
        bail!("--kv applies to text models");
    }
    Ok(())
}

/// The text model in `file`, for the commands that take only text models. A PixelCNN
/// file is refused by its architecture, before loading (a broken one too).
fn text_model(file: &ModelFile) -> Result<Model<'_>> {
    let refuse = || {
        anyhow!(
            "{} is a PixelCNN image model; this command takes text models (see sample, score, impute)",
            file.path().display()
        )
    };
    if file.kind() == Some(Kind::Pixel) {
        return Err(refuse());
    }
    match file.load()? {
        Loaded::Text(m) => Ok(m),
        Loaded::Pixel(_) | Loaded::Graph(_) => Err(refuse()),
        Loaded::Recurrent(_) => {
            bail!("{} is a recurrent model; this command takes transformer text models", file.path().display())
        }
    }
}

/// The model file at `path` when it holds a recurrent model (`None`: another kind, which
/// the command's own path opens again).
fn recurrent_file(path: &std::path::Path) -> Result<Option<ModelFile>> {
    let m = ModelFile::open(path)?;
    Ok((m.kind() == Some(Kind::Recurrent)).then_some(m))
}

/// The recurrent model in `file` (whose kind says it is one).
fn recurrent_model(file: &ModelFile) -> Result<Rnn<'_>> {
    match file.load()? {
        Loaded::Recurrent(m) => Ok(*m),
        _ => bail!("{} is not a recurrent model", file.path().display()),
    }
}

/// A pixel model of either runtime.
enum PixelModel<'a> {
    Cnn(Box<PixelCnn<'a>>),
    Graph(Box<PixelGraph<'a>>),
}

/// The PixelCNN in `file`, for the commands that take only PixelCNN models. A text
/// model's file is refused by its architecture, before loading (a broken one too).
fn pixel_model(file: &ModelFile) -> Result<PixelModel<'_>> {
    let refuse =
        || anyhow!("{} is a text model; sample and impute take PixelCNN models (use generate)", file.path().display());
    if matches!(file.kind(), Some(Kind::Text | Kind::Recurrent)) {
        return Err(refuse());
    }
    match file.load()? {
        Loaded::Pixel(m) => Ok(PixelModel::Cnn(Box::new(m))),
        Loaded::Graph(g) => Ok(PixelModel::Graph(g)),
        Loaded::Text(_) | Loaded::Recurrent(_) => Err(refuse()),
    }
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
