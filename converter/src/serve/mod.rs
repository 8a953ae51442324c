//! `arq serve`: one memory-mapped model behind an HTTP server. Text models get the
//! OpenAI API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, streaming by
//! server-sent events) and arq's own calls (`/v1/next`, `/v1/score`, `/v1/tokenize`,
//! `/v1/detokenize`); PixelCNN models get `/v1/sample`, `/v1/impute` and `/v1/score` on
//! images. `/` is a web page for either kind, embedded in the binary.
//!
//! Text model work runs on one engine thread ([`engine`]) fed by a bounded queue: a full
//! queue answers 503 at once; requests in it wait for a free slot. The HTTP side (axum
//! on tokio) parses, checks, tokenizes and formats only.

mod engine;
mod error;
mod openai;
mod own;
mod page;
mod pixel;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use arq::parallel::ThreadPool;
use arq::{KvDtype, Model, Session};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::model::{Loaded, ModelFile};
use crate::text;
use error::ApiError;

/// Caps on the flags, far above what a small device serves.
pub const MAX_SLOTS: usize = 64;
pub const MAX_QUEUE: usize = 4096;

/// What `arq serve` was asked for.
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Concurrent requests (sequences in the session, each with its own KV cache).
    pub slots: usize,
    /// Context per slot (default: 2048 or the model's, if shorter).
    pub ctx: Option<usize>,
    pub kv: KvDtype,
    pub threads: usize,
    /// Requests that may wait for a slot; more get 503.
    pub queue: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// A request running longer ends (504, or an error event in a stream).
    pub timeout: Duration,
}

/// Limits the handlers check requests against.
#[derive(Clone, Copy)]
pub struct Limits {
    pub ctx: usize,
    pub max_tokens: usize,
    pub timeout: Duration,
}

/// Serves the model at `path` until interrupted (Ctrl-C).
pub fn run(path: &Path, opts: &Options) -> Result<()> {
    if opts.slots == 0 || opts.slots > MAX_SLOTS {
        bail!("--slots must be 1 to {MAX_SLOTS}");
    }
    if opts.queue > MAX_QUEUE {
        bail!("--queue must be at most {MAX_QUEUE}");
    }
    // The server runs until the process ends: the file and model live as long.
    let file: &'static ModelFile = Box::leak(Box::new(ModelFile::open(path)?));
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "arq".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener =
        runtime.block_on(tokio::net::TcpListener::bind(&addr)).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let router = match file.load()? {
        Loaded::Text(model) => text_router(Box::leak(Box::new(model)), name, opts, file.bytes().len())?,
        Loaded::Pixel(model) => pixel::router(Box::leak(Box::new(model)), name, opts),
        Loaded::Graph(_) => {
            bail!("{}: serve does not take pixel-graph models yet (score, sample, bench do)", path.display())
        }
        Loaded::Recurrent(_) => {
            bail!("{}: arq serve takes transformers and PixelCNNs; recurrent models are not served yet", path.display())
        }
    };
    let router = router
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(opts.max_body));
    eprintln!("arq serve: listening on http://{local}/");
    runtime.block_on(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })?;
    Ok(())
}

/// What the text handlers share.
pub struct TextState {
    pub model: &'static Model<'static>,
    pub tok: arq::tokenizer::Tokenizer<'static>,
    pub name: String,
    pub jobs: std::sync::mpsc::SyncSender<engine::Job>,
    pub limits: Limits,
}

impl TextState {
    /// Queues `job`, or answers 503 when the queue is full.
    pub fn submit(&self, job: engine::Job) -> Result<(), ApiError> {
        use std::sync::mpsc::TrySendError;
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::busy(),
            TrySendError::Disconnected(_) => {
                ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the model engine has stopped")
            }
        })
    }
}

/// Starts the engine thread with a session of `opts.slots` sequences and returns the
/// text routes.
fn text_router(model: &'static Model<'static>, name: String, opts: &Options, file_len: usize) -> Result<Router> {
    let mut cfg = text::session_config(model, opts.ctx, opts.kv, opts.threads)?;
    cfg.seqs = opts.slots;
    cfg.batch = cfg.batch.max(opts.slots);
    let arena_bytes = model.memory_plan(&cfg)?;
    let kv_bytes = model.kv_cache_bytes(&cfg, true)?;
    let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let threads = opts.threads;
    std::thread::Builder::new()
        .name("arq-engine".into())
        .spawn(move || {
            // The session borrows the pool and the arena: both live on this thread's stack
            // for as long as it serves.
            let setup = || -> Result<(ThreadPool, Vec<u8>)> {
                let pool = ThreadPool::new(threads).context("cannot start worker threads")?;
                Ok((pool, text::new_arena(model, &cfg)?))
            };
            let (pool, mut arena) = match setup() {
                Ok(x) => x,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            let session = Session::new(model, &mut arena, cfg).and_then(|mut s| s.set_parallel(&pool).map(|_| s));
            let tok = text::tokenizer(model);
            match (session, tok) {
                (Ok(session), Ok(tok)) => {
                    let _ = ready_tx.send(Ok(()));
                    engine::Engine::new(model, tok, session).run(queue);
                }
                (Err(e), _) => drop(ready_tx.send(Err(e.into()))),
                (_, Err(e)) => drop(ready_tx.send(Err(e))),
            }
        })
        .context("cannot start the engine thread")?;
    ready_rx.recv().map_err(|_| anyhow!("the engine thread stopped"))??;
    eprintln!(
        "arq serve: {name}: {} model, {} slots x {} tokens of context, arena {:.1} MiB (KV cache {:.1} MiB), \
         model file {:.1} MiB mapped, {threads} threads",
        model.config().family.name(),
        opts.slots,
        cfg.ctx,
        arena_bytes as f64 / (1 << 20) as f64,
        kv_bytes as f64 / (1 << 20) as f64,
        file_len as f64 / (1 << 20) as f64,
    );
    let limits = Limits { ctx: cfg.ctx, max_tokens: opts.max_tokens, timeout: opts.timeout };
    let state = Arc::new(TextState { model, tok: text::tokenizer(model)?, name, jobs, limits });
    Ok(Router::new()
        .route("/", get(page::text))
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/next", post(own::next))
        .route("/v1/score", post(own::score))
        .route("/v1/tokenize", post(own::tokenize))
        .route("/v1/detokenize", post(own::detokenize))
        .with_state(state))
}
