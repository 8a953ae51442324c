//! The endpoints for PixelCNN models: `/v1/sample`, `/v1/impute` and `/v1/score` on
//! images, as JSON with level arrays or PNGs (base64). Each call runs on a blocking
//! thread; `--slots` of them at once, `--queue` more waiting, the rest get 503.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arq::PixelCnn;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::error::{parse, ApiError};
use super::openai::body_bytes;
use super::{page, Options};
use crate::images::{self, Images};
use crate::pixel::{self, ImputeMethod};

/// Caps on one request: images sampled or scored, and SMC particles.
const MAX_SAMPLES: u64 = 256;
const MAX_SCORED: usize = 4096;
const MAX_PARTICLES: u64 = 4096;

pub struct PixelState {
    model: &'static PixelCnn<'static>,
    name: String,
    /// Calls running or waiting (slots + queue); none left answers 503.
    admitted: Semaphore,
    /// Calls running.
    running: Semaphore,
    timeout: std::time::Duration,
}

pub fn router(model: &'static PixelCnn<'static>, name: String, opts: &Options) -> Router {
    let c = model.config();
    eprintln!(
        "arq serve: {name}: PixelCNN over {}x{} images with {} levels ({} head), {} slots",
        c.height,
        c.width,
        c.levels,
        c.head.name(),
        opts.slots
    );
    let state = Arc::new(PixelState {
        model,
        name,
        admitted: Semaphore::new(opts.slots + opts.queue),
        running: Semaphore::new(opts.slots),
        timeout: opts.timeout,
    });
    Router::new()
        .route("/", get(page::pixel))
        .route("/v1/models", get(models))
        .route("/v1/sample", post(sample))
        .route("/v1/impute", post(impute))
        .route("/v1/score", post(score))
        .with_state(state)
}

type Body = Result<Bytes, BytesRejection>;

/// Runs `job` on a blocking thread once a slot is free, within the timeout.
async fn run<T: Send + 'static>(
    st: &PixelState,
    job: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let _admitted = st.admitted.try_acquire().map_err(|_| ApiError::busy())?;
    let work = async {
        let _running = st.running.acquire().await.map_err(|_| ApiError::busy())?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|_| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the job failed"))?
            .map_err(|e| ApiError::bad(e.to_string()))
    };
    tokio::time::timeout(st.timeout, work)
        .await
        .map_err(|_| ApiError::status(StatusCode::GATEWAY_TIMEOUT, "the request ran past the server's timeout"))?
}

fn levels_png(model: &PixelCnn<'_>, images: &Images, cols: usize, scale: usize) -> String {
    let levels = model.config().levels;
    let grey =
        Images { data: images.data.iter().map(|&v| images::level_to_gray(v, levels)).collect(), ..images.clone() };
    let (h, w, px) = images::grid(&grey, cols, scale, if images.n > 1 { 1 } else { 0 });
    let png = images::png_gray_to_bytes(h, w, &px).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// An image given as levels (`levels`) or as a base64 PNG of grey values (`png`), checked
/// against the model's size; a PNG's grey is mapped to levels.
fn image_in(
    model: &PixelCnn<'_>,
    levels: Option<&Vec<u16>>,
    png: Option<&String>,
    what: &'static str,
) -> Result<Vec<u8>, ApiError> {
    let c = model.config();
    let px: Vec<u8> = match (levels, png) {
        (Some(v), None) => {
            if let Some(&bad) = v.iter().find(|&&x| x as usize >= c.levels) {
                return Err(ApiError::param(
                    what,
                    format!("{what}: value {bad} is outside the model's levels 0..{}", c.levels - 1),
                ));
            }
            v.iter().map(|&x| x as u8).collect()
        }
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::param(what, format!("{what}: not base64: {e}")))?;
            let (h, w, grey) =
                images::png_gray_from_bytes(&bytes).map_err(|e| ApiError::param(what, format!("{what}: {e}")))?;
            if (h, w) != (c.height, c.width) {
                return Err(ApiError::param(
                    what,
                    format!("{what}: image is {h}x{w}, the model takes {}x{}", c.height, c.width),
                ));
            }
            grey.iter().map(|&g| images::gray_to_level(g, c.levels)).collect()
        }
        _ => return Err(ApiError::param(what, format!("give {what} as levels or as png, one of the two"))),
    };
    if px.len() != c.pixels() {
        return Err(ApiError::param(
            what,
            format!("{what}: {} values; the model takes {}x{} = {}", px.len(), c.height, c.width, c.pixels()),
        ));
    }
    Ok(px)
}

fn default_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn check_temp(t: Option<f32>) -> Result<f32, ApiError> {
    let t = t.unwrap_or(1.0);
    if !(t >= 0.0 && t.is_finite()) {
        return Err(ApiError::param("temperature", "temperature must be a finite number >= 0"));
    }
    Ok(t)
}

async fn models(State(st): State<Arc<PixelState>>) -> Json<Value> {
    let c = st.model.config();
    Json(json!({"object": "list", "data": [{
        "id": st.name, "object": "model", "created": 0, "owned_by": "arq",
        "meta": {"kind": "pixelcnn", "height": c.height, "width": c.width, "levels": c.levels, "head": c.head.name()},
    }]}))
}

#[derive(Deserialize)]
struct SampleBody {
    n: Option<u64>,
    seed: Option<u64>,
    temperature: Option<f32>,
}

async fn sample(State(st): State<Arc<PixelState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: SampleBody = parse(&body_bytes(body)?)?;
    let n = b.n.unwrap_or(16);
    if n == 0 || n > MAX_SAMPLES {
        return Err(ApiError::param("n", format!("n must be 1 to {MAX_SAMPLES}")));
    }
    let (seed, temp) = (b.seed.unwrap_or_else(default_seed), check_temp(b.temperature)?);
    let model = st.model;
    let t0 = Instant::now();
    let imgs = run(&st, move || pixel::sample_images(model, n as usize, seed, temp)).await?;
    let c = model.config();
    let list: Vec<&[u8]> = (0..imgs.n).map(|i| imgs.image(i)).collect();
    Ok(Json(json!({
        "height": c.height, "width": c.width, "levels": c.levels, "seed": seed,
        "images": list, "png": levels_png(model, &imgs, 8, 4), "ms": t0.elapsed().as_secs_f64() * 1e3,
    })))
}

#[derive(Deserialize)]
struct ImputeBody {
    image: Option<Vec<u16>>,
    image_png: Option<String>,
    /// 1 (or true) where a pixel is missing.
    mask: Option<Vec<u16>>,
    /// A PNG whose pixels >= 128 are missing (as `arq impute --mask`).
    mask_png: Option<String>,
    particles: Option<u64>,
    seed: Option<u64>,
    temperature: Option<f32>,
}

async fn impute(State(st): State<Arc<PixelState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: ImputeBody = parse(&body_bytes(body)?)?;
    let model = st.model;
    let c = model.config();
    if !c.head.is_discrete() {
        return Err(ApiError::bad(format!(
            "this model's {} head takes continuous values; imputation needs a discrete head",
            c.head.name()
        )));
    }
    let image = image_in(model, b.image.as_ref(), b.image_png.as_ref(), "image")?;
    let missing: Vec<bool> = match (&b.mask, &b.mask_png) {
        (Some(m), None) if m.len() == c.pixels() => m.iter().map(|&v| v != 0).collect(),
        (Some(m), None) => {
            return Err(ApiError::param("mask", format!("mask: {} values; the model takes {}", m.len(), c.pixels())))
        }
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::param("mask", format!("mask_png: not base64: {e}")))?;
            let (h, w, grey) =
                images::png_gray_from_bytes(&bytes).map_err(|e| ApiError::param("mask", format!("mask_png: {e}")))?;
            if (h, w) != (c.height, c.width) {
                return Err(ApiError::param(
                    "mask",
                    format!("mask is {h}x{w}, the model takes {}x{}", c.height, c.width),
                ));
            }
            grey.iter().map(|&g| g >= 128).collect()
        }
        _ => return Err(ApiError::param("mask", "give mask as 0/1 values or as mask_png, one of the two")),
    };
    let particles = b.particles.unwrap_or(64);
    if particles == 0 || particles > MAX_PARTICLES {
        return Err(ApiError::param("particles", format!("particles must be 1 to {MAX_PARTICLES}")));
    }
    let (seed, temp) = (b.seed.unwrap_or_else(default_seed), check_temp(b.temperature)?);
    let t0 = Instant::now();
    let n_missing = missing.iter().filter(|&&m| m).count();
    let (out, method) =
        run(&st, move || pixel::impute(model, &image, &missing, particles as usize, seed, temp)).await?;
    let one = Images { n: 1, height: c.height, width: c.width, data: out.clone() };
    let mut v = json!({
        "image": out, "png": levels_png(model, &one, 1, 8), "missing_pixels": n_missing, "seed": seed,
        "ms": t0.elapsed().as_secs_f64() * 1e3,
    });
    match method {
        ImputeMethod::Exact => v["method"] = json!("exact"),
        ImputeMethod::Smc { particles, resamples, final_ess } => {
            v["method"] = json!("smc");
            v["particles"] = json!(particles);
            v["resamples"] = json!(resamples);
            v["ess"] = json!(final_ess);
        }
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
struct ScoreBody {
    images: Option<Vec<Vec<u16>>>,
    pngs: Option<Vec<String>>,
}

async fn score(State(st): State<Arc<PixelState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: ScoreBody = parse(&body_bytes(body)?)?;
    let model = st.model;
    let c = model.config();
    let mut data = Vec::new();
    let n = match (&b.images, &b.pngs) {
        (Some(list), None) => {
            for img in list.iter().take(MAX_SCORED) {
                data.extend(image_in(model, Some(img), None, "images")?);
            }
            list.len()
        }
        (None, Some(list)) => {
            for png in list.iter().take(MAX_SCORED) {
                data.extend(image_in(model, None, Some(png), "pngs")?);
            }
            list.len()
        }
        _ => return Err(ApiError::param("images", "give images (levels) or pngs (base64), one of the two")),
    };
    if n == 0 || n > MAX_SCORED {
        return Err(ApiError::param("images", format!("1 to {MAX_SCORED} images")));
    }
    let imgs = Images { n, height: c.height, width: c.width, data };
    let nll = run(&st, move || pixel::score_images(model, &imgs, 1)).await?;
    let dims = c.pixels() as f64 * std::f64::consts::LN_2;
    let bpd: Vec<f64> = nll.iter().map(|v| v / dims).collect();
    Ok(Json(json!({"nll_nats": nll, "bits_per_dim": bpd})))
}
