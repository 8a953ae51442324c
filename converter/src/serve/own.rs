//! arq's own endpoints for text models: `/v1/next` (the next-token distribution after a
//! text, the call a type-ahead keyboard makes, with prefix reuse), `/v1/score` (exact
//! log-likelihood, as `arq score --json`), `/v1/tokenize` and `/v1/detokenize`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::engine::{Job, NextRequest, ScoreRequest};
use super::error::{parse, ApiError};
use super::openai::body_bytes;
use super::TextState;
use crate::text;

/// The most tokens `/v1/next` lists.
const MAX_TOP: u64 = 1000;

#[derive(Deserialize)]
struct NextBody {
    #[serde(alias = "prompt")]
    text: String,
    top: Option<u64>,
    #[serde(default)]
    chat: bool,
}

#[derive(Deserialize)]
struct ScoreBody {
    text: String,
    #[serde(default)]
    per_token: bool,
}

#[derive(Deserialize)]
struct TokenizeBody {
    #[serde(alias = "text")]
    content: String,
    /// Add BOS as the model does for a prompt, and match special tokens whole.
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
}

type Body = Result<Bytes, BytesRejection>;

/// Waits for the engine's answer, within the request timeout.
async fn answer<T>(st: &TextState, rx: oneshot::Receiver<Result<T, String>>) -> Result<T, ApiError> {
    match tokio::time::timeout(st.limits.timeout, rx).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(ApiError::bad(e)),
        Ok(Err(_)) => Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the model engine has stopped")),
        Err(_) => Err(ApiError::status(StatusCode::GATEWAY_TIMEOUT, "the request ran past the server's timeout")),
    }
}

pub async fn next(State(st): State<Arc<TextState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: NextBody = parse(&body_bytes(body)?)?;
    let top = b.top.unwrap_or(10);
    if top == 0 || top > MAX_TOP {
        return Err(ApiError::param("top", format!("top must be 1 to {MAX_TOP}")));
    }
    let ids = text::encode_prompt(st.model, &st.tok, &b.text, b.chat).map_err(|e| ApiError::bad(e.to_string()))?;
    if ids.len() > st.limits.ctx {
        return Err(ApiError::param(
            "text",
            format!("the text is {} tokens; the server's context is {}", ids.len(), st.limits.ctx),
        )
        .code("context_length_exceeded"));
    }
    let (reply, rx) = oneshot::channel();
    let n = ids.len();
    st.submit(Job::Next(NextRequest { ids, top: top as usize, reply }))?;
    let r = answer(&st, rx).await?;
    let top: Vec<Value> = r
        .top
        .iter()
        .map(|&(id, lp)| json!({"id": id, "token": text::token_text(&st.tok, id), "prob": lp.exp(), "logprob": lp}))
        .collect();
    Ok(Json(json!({"prompt_tokens": n, "cached_tokens": r.cached_tokens, "ms": r.seconds * 1e3, "top": top})))
}

pub async fn score(State(st): State<Arc<TextState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: ScoreBody = parse(&body_bytes(body)?)?;
    let (ids, bos_added) = text::encode_text(st.model, &st.tok, &b.text);
    if ids.len() < 2 {
        return Err(ApiError::param("text", "fewer than 2 tokens, nothing to score"));
    }
    if st.limits.ctx < 2 {
        return Err(ApiError::bad("the server's context is shorter than 2 tokens"));
    }
    let (reply, rx) = oneshot::channel();
    st.submit(Job::Score(ScoreRequest { ids, reply }))?;
    let s = answer(&st, rx).await?;
    Ok(Json(s.to_json(&st.tok, st.limits.ctx, bos_added, b.per_token)))
}

pub async fn tokenize(State(st): State<Arc<TextState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: TokenizeBody = parse(&body_bytes(body)?)?;
    let ids = if b.add_special {
        text::encode_prompt(st.model, &st.tok, &b.content, false).map_err(|e| ApiError::bad(e.to_string()))?
    } else {
        st.tok.encode(&b.content, false)
    };
    if b.with_pieces {
        let pieces: Vec<Value> =
            ids.iter().map(|&id| json!({"id": id, "piece": text::token_text(&st.tok, id)})).collect();
        return Ok(Json(json!({"tokens": pieces})));
    }
    Ok(Json(json!({"tokens": ids})))
}

pub async fn detokenize(State(st): State<Arc<TextState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let b: DetokenizeBody = parse(&body_bytes(body)?)?;
    let vocab = st.model.config().vocab;
    if let Some(id) = b.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::param("tokens", format!("token {id} is outside the vocabulary of {vocab}")));
    }
    Ok(Json(json!({"content": st.tok.decode(&b.tokens)})))
}
