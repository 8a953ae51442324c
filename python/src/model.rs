//! `arq.Model`: an `.arq` file opened once, text model or PixelCNN, and the calls the
//! CLI's commands make on it (`next`, `score`, `generate`, `sample`, `impute`), with the
//! CLI's defaults. Each call runs on its own session, so several Python threads can
//! use one `Model` at once; the GIL is released while it computes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use numpy::{IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use arq::parallel::ThreadPool;
use arq::sampler::{Sampler, SamplerConfig};
use arq::tokenizer::Tokenizer;
use arq::{KvDtype, PixelCnn, Session, SessionConfig};
use arq_convert::images::Images;
use arq_convert::pixel::{self, ImputeMethod};
use arq_convert::text::{self, encode_prompt, new_arena, session_config, token_text};

use crate::owned::{Kind, Owned, OwnedSession};
use crate::session::{Generation, Session as PySession};
use crate::{bad_argument, to_py, Blame};

/// The caps the CLI's flags have (`converter/src/cli/mod.rs`): images one `sample`
/// makes, and SMC particles.
const MAX_IMAGES: usize = 4096;
const MAX_PARTICLES: usize = 1 << 16;
const MAX_THREADS: usize = 256;
/// The runtime's cap on a context length, and on generated tokens.
pub const MAX_CTX: usize = 1 << 24;

/// A model file: a text model with its tokenizer, or a PixelCNN over images.
#[pyclass(module = "arq._arq", frozen)]
pub struct Model {
    owner: Arc<Owned>,
    threads: usize,
}

fn kv_dtype(kv: &str) -> PyResult<KvDtype> {
    match kv {
        "f32" => Ok(KvDtype::F32),
        "q8" => Ok(KvDtype::Q8),
        _ => Err(bad_argument(format!("kv must be 'f32' or 'q8', not {kv:?}"))),
    }
}

/// Refuses a text longer than the CLI reads from a file (64 MiB): the token ids and
/// per-token results it would produce grow with it.
fn check_text(text: &str, what: &str) -> PyResult<()> {
    let cap = arq_convert::input::MAX_TEXT_BYTES;
    if text.len() as u64 > cap {
        return Err(bad_argument(format!("{what} is {} bytes, over the cap of {cap}", text.len())));
    }
    Ok(())
}

fn check_ctx(ctx: Option<usize>) -> PyResult<()> {
    match ctx {
        Some(c) if c > MAX_CTX => Err(bad_argument(format!("ctx {c} is over the cap of {MAX_CTX}"))),
        _ => Ok(()),
    }
}

/// Runs `f` on a fresh session of `cfg` with its own thread pool, as each CLI command does.
fn with_session<R>(
    model: &arq::Model<'_>,
    cfg: SessionConfig,
    f: impl FnOnce(&mut Session<'_>) -> Result<R>,
) -> Result<R> {
    let pool = ThreadPool::new(cfg.threads).map_err(|e| anyhow!("cannot start worker threads: {e}"))?;
    let mut arena = new_arena(model, &cfg)?;
    let mut session = Session::new(model, &mut arena, cfg)?;
    session.set_parallel(&pool)?;
    f(&mut session)
}

/// `images` (uint8, (N, H, W) or (N, H, W, 1)) as the library's image set, copied in C
/// order (the library owns its images).
fn images_of(x: &Bound<'_, PyAny>) -> PyResult<Images> {
    let arr = x
        .cast::<PyArrayDyn<u8>>()
        .map_err(|_| bad_argument("images must be a numpy uint8 array of shape (N, H, W) or (N, H, W, 1)"))?;
    let ro = arr.readonly();
    let shape = ro.shape().to_vec();
    let (n, h, w) = match shape[..] {
        [n, h, w] | [n, h, w, 1] => (n, h, w),
        _ => return Err(bad_argument(format!("images have shape {shape:?}; expected (N, H, W) or (N, H, W, 1)"))),
    };
    Ok(Images { n, height: h, width: w, data: ro.as_array().iter().copied().collect() })
}

/// One (H, W) uint8 or bool array as a flat vector, checked against the model's size.
fn plane<T: numpy::Element + Copy>(
    x: &Bound<'_, PyAny>,
    what: &str,
    dtype: &str,
    (h, w): (usize, usize),
) -> PyResult<Vec<T>> {
    let arr = x
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| bad_argument(format!("{what} must be a numpy {dtype} array of shape ({h}, {w})")))?;
    let ro = arr.readonly();
    if ro.shape() != [h, w] {
        return Err(bad_argument(format!("{what} has shape {:?}; the model takes ({h}, {w})", ro.shape())));
    }
    Ok(ro.as_array().iter().copied().collect())
}

impl Model {
    fn text(&self) -> PyResult<(&arq::Model<'_>, &Tokenizer<'_>)> {
        match self.owner.kind() {
            Kind::Text { model, tok } => Ok((model, tok)),
            Kind::Pixel(_) => Err(bad_argument(format!(
                "{} is a PixelCNN image model; this method takes text models (see sample, score, impute)",
                self.owner.path().display()
            ))),
        }
    }

    fn pixel(&self) -> PyResult<&PixelCnn<'_>> {
        match self.owner.kind() {
            Kind::Pixel(model) => Ok(model),
            Kind::Text { .. } => Err(bad_argument(format!(
                "{} is a text model; sample and impute take PixelCNN models (use generate)",
                self.owner.path().display()
            ))),
        }
    }

    fn score_text<'py>(
        &self,
        py: Python<'py>,
        content: &str,
        per_token: bool,
        ctx: Option<usize>,
        kv: KvDtype,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (model, tok) = self.text()?;
        check_text(content, "the text")?;
        check_ctx(ctx)?;
        let (s, cfg, bos_added) = py
            .detach(|| -> Result<_> {
                let cfg = session_config(model, ctx, kv, self.threads)?;
                if cfg.ctx < 2 {
                    bail!("ctx must be at least 2 to score");
                }
                let (ids, bos_added) = text::encode_text(model, tok, content);
                if ids.len() < 2 {
                    bail!("the text has fewer than 2 tokens, nothing to score");
                }
                Ok((with_session(model, cfg, |s| text::score(s, &ids))?, cfg, bos_added))
            })
            .map_err(|e| to_py(e, Blame::Argument))?;
        let t = s.summary(tok);
        let d = PyDict::new(py);
        d.set_item("tokens", t.tokens)?;
        d.set_item("nll_nats", t.nll_nats)?;
        d.set_item("perplexity", t.perplexity)?;
        d.set_item("bits_per_token", t.bits_per_token)?;
        d.set_item("bits_per_byte", t.bits_per_byte)?;
        d.set_item("bytes", t.bytes)?;
        d.set_item("bos_added", bos_added)?;
        let windows = PyDict::new(py);
        windows.set_item("count", s.windows)?;
        windows.set_item("ctx", cfg.ctx)?;
        windows.set_item("stride", s.stride)?;
        windows.set_item("min_context", s.min_context)?;
        windows.set_item("evaluated_tokens", s.evaluated)?;
        d.set_item("windows", windows)?;
        if per_token {
            let col = |f: &dyn Fn(&text::Scored) -> f64| s.scored.iter().map(f).collect::<Vec<f64>>();
            let ids = |f: &dyn Fn(&text::Scored) -> u32| s.scored.iter().map(f).collect::<Vec<u32>>();
            let p = PyDict::new(py);
            p.set_item("pos", s.scored.iter().map(|x| x.pos as i64).collect::<Vec<_>>().into_pyarray(py))?;
            p.set_item("id", ids(&|x| x.id).into_pyarray(py))?;
            p.set_item("logprob", col(&|x| x.logprob).into_pyarray(py))?;
            p.set_item("top_id", ids(&|x| x.top_id).into_pyarray(py))?;
            p.set_item("top_logprob", col(&|x| x.top_logprob).into_pyarray(py))?;
            d.set_item("per_token", p)?;
        }
        Ok(d)
    }

    fn score_images<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let model = self.pixel()?;
        let imgs = images_of(x)?;
        let nll =
            py.detach(|| pixel::score_images(model, &imgs, self.threads)).map_err(|e| to_py(e, Blame::Argument))?;
        Ok(nll.into_pyarray(py))
    }
}

#[pymethods]
impl Model {
    /// Opens the `.arq` file at `path` (text model or PixelCNN); `threads` workers per
    /// call (default: the available cores).
    #[new]
    #[pyo3(signature = (path, threads = None))]
    fn new(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<Self> {
        let threads = match threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(t @ 1..=MAX_THREADS) => t,
            Some(t) => return Err(bad_argument(format!("threads must be 1..={MAX_THREADS}, not {t}"))),
        };
        let owner = py.detach(|| Owned::open(&path)).map_err(|e| to_py(e, Blame::File))?;
        Ok(Model { owner: Arc::new(owner), threads })
    }

    /// `"text"` or `"pixel"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.owner.kind() {
            Kind::Text { .. } => "text",
            Kind::Pixel(_) => "pixel",
        }
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.owner.path().to_path_buf()
    }

    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// The model's hyperparameters: for text models `family`, `vocab`, `dim`, `n_layers`,
    /// `ctx_train`; for PixelCNN models `height`, `width`, `channels`, `levels`, `head`.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match self.owner.kind() {
            Kind::Text { model, .. } => {
                let c = model.config();
                d.set_item("family", c.family.name())?;
                d.set_item("vocab", c.vocab)?;
                d.set_item("dim", c.dim)?;
                d.set_item("n_layers", c.n_layers)?;
                d.set_item("ctx_train", c.ctx_train)?;
            }
            Kind::Pixel(model) => {
                let c = model.config();
                d.set_item("height", c.height)?;
                d.set_item("width", c.width)?;
                d.set_item("channels", c.channels)?;
                d.set_item("levels", c.levels)?;
                d.set_item("head", c.head.name())?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "arq.Model({:?}, kind={:?}, threads={})",
            self.owner.path().display().to_string(),
            self.kind(),
            self.threads
        )
    }

    /// The token ids of `text` (no BOS); `special`: control tokens written in the text
    /// are matched whole.
    #[pyo3(signature = (text, special = false))]
    fn tokenize(&self, py: Python<'_>, text: &str, special: bool) -> PyResult<Vec<u32>> {
        let (_, tok) = self.text()?;
        check_text(text, "the text")?;
        Ok(py.detach(|| tok.encode(text, special)))
    }

    /// The ids `generate` and `next` run for `prompt`: BOS when the model asks for it,
    /// `chat`: wrapped in the model's chat template as a user message.
    #[pyo3(signature = (prompt, chat = false))]
    fn prompt_ids(&self, py: Python<'_>, prompt: &str, chat: bool) -> PyResult<Vec<u32>> {
        let (model, tok) = self.text()?;
        check_text(prompt, "the prompt")?;
        py.detach(|| encode_prompt(model, tok, prompt, chat)).map_err(|e| to_py(e, Blame::Argument))
    }

    /// The text of `ids` (invalid UTF-8 replaced).
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        let (model, tok) = self.text()?;
        let vocab = model.config().vocab;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(bad_argument(format!("token id {id} out of range (vocabulary {vocab})")));
        }
        Ok(tok.decode(&ids))
    }

    /// The most likely next tokens after `prompt`, most likely first: `(token, id, prob)`.
    #[pyo3(signature = (prompt, top = 10, chat = false, kv = "f32"))]
    fn next(
        &self,
        py: Python<'_>,
        prompt: &str,
        top: usize,
        chat: bool,
        kv: &str,
    ) -> PyResult<Vec<(String, u32, f64)>> {
        let (model, tok) = self.text()?;
        check_text(prompt, "the prompt")?;
        let kv = kv_dtype(kv)?;
        if top == 0 {
            return Err(bad_argument("top must be at least 1"));
        }
        py.detach(|| -> Result<_> {
            let ids = encode_prompt(model, tok, prompt, chat)?;
            let cfg = session_config(model, Some(ids.len().max(1)), kv, self.threads)
                .map_err(|_| anyhow!("prompt is {} tokens, longer than the model's context", ids.len()))?;
            let top = with_session(model, cfg, |s| Ok(text::top_tokens(s.prefill(&ids)?, top)))?;
            Ok(top.into_iter().map(|(id, lp)| (token_text(tok, id), id, lp.exp())).collect())
        })
        .map_err(|e| to_py(e, Blame::Argument))
    }

    /// Text models: the exact log-likelihood of the string `x` (windows of `ctx` tokens
    /// advancing by half), as a dict (`nll_nats`, `perplexity`, `bits_per_token`,
    /// `bits_per_byte`, ..., with `per_token`: numpy arrays `pos`, `id`, `logprob`,
    /// `top_id`, `top_logprob`). PixelCNN models: the NLL in nats of each image of the
    /// uint8 array `x` (N, H, W), as a float64 array.
    #[pyo3(signature = (x, per_token = false, ctx = None, kv = "f32"))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        per_token: bool,
        ctx: Option<usize>,
        kv: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Kind::Pixel(_) = self.owner.kind() {
            if per_token || ctx.is_some() || kv != "f32" {
                return Err(bad_argument("per_token, ctx and kv apply to text models"));
            }
            return Ok(self.score_images(py, x)?.into_any());
        }
        let content: String = x.extract().map_err(|_| bad_argument("a text model scores a str"))?;
        Ok(self.score_text(py, &content, per_token, ctx, kv_dtype(kv)?)?.into_any())
    }

    /// An iterator over the text generated after `prompt`, a piece per token (whole
    /// UTF-8 characters). The sampling options and defaults are `arq generate`'s; the
    /// same seed gives the same text.
    #[pyo3(signature = (prompt = "", max_tokens = 128, *, temperature = 0.8, top_k = None, top_p = 0.95,
                        min_p = 0.05, repeat_penalty = 1.0, seed = 0, chat = false, ctx = None, kv = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        seed: u64,
        chat: bool,
        ctx: Option<usize>,
        kv: &str,
    ) -> PyResult<Generation> {
        let (model, tok) = self.text()?;
        check_text(prompt, "the prompt")?;
        let kv = kv_dtype(kv)?;
        check_ctx(ctx)?;
        if max_tokens > MAX_CTX {
            return Err(bad_argument(format!("max_tokens {max_tokens} is over the cap of {MAX_CTX}")));
        }
        if top_k == Some(0) {
            return Err(bad_argument("top_k must be at least 1 (None: off)"));
        }
        let sampler = Sampler::new(SamplerConfig {
            temperature,
            top_k: top_k.unwrap_or(0),
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n: 64,
            seed,
        })
        .map_err(|e| bad_argument(e.to_string()))?;
        let owner = Arc::clone(&self.owner);
        py.detach(|| -> Result<_> {
            let cfg = session_config(model, ctx, kv, self.threads)?;
            let ids = encode_prompt(model, tok, prompt, chat)?;
            if ids.len() >= cfg.ctx {
                bail!("prompt is {} tokens, longer than the context ({}); raise ctx or shorten it", ids.len(), cfg.ctx);
            }
            Generation::start(OwnedSession::new(owner, cfg)?, sampler, &ids, max_tokens)
        })
        .map_err(|e| to_py(e, Blame::Argument))
    }

    /// A session of `ctx` tokens on this text model, to feed tokens and read logits step
    /// by step.
    #[pyo3(signature = (ctx = None, kv = "f32"))]
    fn session(&self, py: Python<'_>, ctx: Option<usize>, kv: &str) -> PyResult<PySession> {
        let (model, _) = self.text()?;
        let kv = kv_dtype(kv)?;
        check_ctx(ctx)?;
        let owner = Arc::clone(&self.owner);
        py.detach(|| -> Result<_> {
            let cfg = session_config(model, ctx, kv, self.threads)?;
            Ok(PySession::new(OwnedSession::new(owner, cfg)?, model.config().vocab))
        })
        .map_err(|e| to_py(e, Blame::Argument))
    }

    /// PixelCNN models: `n` images sampled as uint8 levels, shape (n, H, W); image `i`
    /// uses the seed `seed + i` (as `arq sample`).
    #[pyo3(signature = (n = 16, seed = 0, temperature = 1.0))]
    fn sample<'py>(&self, py: Python<'py>, n: usize, seed: u64, temperature: f32) -> PyResult<Bound<'py, PyAny>> {
        let model = self.pixel()?;
        if !(1..=MAX_IMAGES).contains(&n) {
            return Err(bad_argument(format!("n must be 1..={MAX_IMAGES}, not {n}")));
        }
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(bad_argument("temperature must be a finite number >= 0"));
        }
        let imgs =
            py.detach(|| pixel::sample_images(model, n, seed, temperature)).map_err(|e| to_py(e, Blame::Argument))?;
        Ok(imgs.data.into_pyarray(py).reshape([imgs.n, imgs.height, imgs.width])?.into_any())
    }

    /// PixelCNN models: fills the pixels of the uint8 image (H, W) where the bool `mask`
    /// is true, conditioned on the others (exact sampling, or sequential Monte Carlo with
    /// `particles` when observed pixels follow missing ones). Returns the filled image
    /// and a dict (`method`, and for SMC `particles`, `resamples`, `ess`).
    #[pyo3(signature = (image, mask, particles = 64, seed = 0, temperature = 1.0))]
    fn impute<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        mask: &Bound<'py, PyAny>,
        particles: usize,
        seed: u64,
        temperature: f32,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let model = self.pixel()?;
        let c = model.config();
        let size = (c.height, c.width);
        let image: Vec<u8> = plane(image, "image", "uint8", size)?;
        let missing: Vec<bool> = plane(mask, "mask", "bool", size)?;
        if !(1..=MAX_PARTICLES).contains(&particles) {
            return Err(bad_argument(format!("particles must be 1..={MAX_PARTICLES}, not {particles}")));
        }
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(bad_argument("temperature must be a finite number >= 0"));
        }
        let (out, method) = py
            .detach(|| pixel::impute(model, &image, &missing, particles, seed, temperature))
            .map_err(|e| to_py(e, Blame::Argument))?;
        let info = PyDict::new(py);
        match method {
            ImputeMethod::Exact => info.set_item("method", "exact")?,
            ImputeMethod::Smc { particles, resamples, final_ess } => {
                info.set_item("method", "smc")?;
                info.set_item("particles", particles)?;
                info.set_item("resamples", resamples)?;
                info.set_item("ess", final_ess)?;
            }
        }
        info.set_item("missing_pixels", missing.iter().filter(|&&m| m).count())?;
        Ok((out.into_pyarray(py).reshape([c.height, c.width])?.into_any(), info))
    }
}
