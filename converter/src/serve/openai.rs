//! The OpenAI-compatible endpoints: `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, streamed as server-sent events or answered whole, in the
//! shapes the official client libraries parse.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arq::sampler::SamplerConfig;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::engine::{self, Event, Finish, FinishReason, GenRequest, Job, TokenLogprob};
use super::error::{parse, ApiError};
use super::TextState;
use crate::text;

/// The most alternatives `logprobs` / `top_logprobs` may ask for (OpenAI's own cap).
const MAX_TOP_LOGPROBS: u64 = 20;
/// Stop strings per request, and bytes per stop string.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both completion calls share.
#[derive(Deserialize)]
struct Common {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// llama-server's extensions: keep the `top_k` most likely tokens (0: all), drop
    /// those below `min_p` times the most likely one's probability (0: none).
    top_k: Option<u64>,
    min_p: Option<f32>,
    /// llama-server's extension: never sample the end-of-text token.
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    logprobs: Option<u64>,
    #[serde(default)]
    echo: bool,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u64>,
    #[serde(flatten)]
    common: Common,
}

/// Which of the two calls a response is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

pub async fn models(State(st): State<Arc<TextState>>) -> Json<Value> {
    let c = st.model.config();
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.name,
            "object": "model",
            "created": 0,
            "owned_by": "arq",
            "meta": {"family": c.family.name(), "vocab": c.vocab, "ctx": st.limits.ctx, "ctx_train": c.ctx_train},
        }],
    }))
}

pub async fn completions(State(st): State<Arc<TextState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> Result<(Vec<u32>, Settings), ApiError> {
        let req: CompletionRequest = parse(&body_bytes(body)?)?;
        if req.echo {
            return Err(ApiError::param("echo", "echo is not supported"));
        }
        let model = st.model;
        let ids = match req.prompt {
            Prompt::Text(p) => encode(&st, &p)?,
            Prompt::Texts(ps) if ps.len() == 1 => encode(&st, &ps[0])?,
            Prompt::Texts(_) => return Err(ApiError::param("prompt", "one prompt per request")),
            Prompt::Ids(ids) => {
                let vocab = model.config().vocab;
                if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::param("prompt", format!("token {id} is outside the vocabulary of {vocab}")));
                }
                ids
            }
        };
        let top = req.logprobs.map(|k| k.min(MAX_TOP_LOGPROBS) as usize);
        Ok((ids, settings(&st, &req.common, top, 16)?))
    };
    respond(st.clone(), Api::Completions, run()).await
}

pub async fn chat(State(st): State<Arc<TextState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> Result<(Vec<u32>, Settings), ApiError> {
        let req: ChatRequest = parse(&body_bytes(body)?)?;
        if req.messages.is_empty() {
            return Err(ApiError::param("messages", "messages must not be empty"));
        }
        let mut turns = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            if !["system", "user", "assistant", "developer"].contains(&m.role.as_str()) {
                return Err(ApiError::param("messages", format!("unknown role '{}'", m.role)));
            }
            let role = if m.role == "developer" { "system" } else { m.role.as_str() };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::param(
                                    "messages",
                                    format!("content of type '{kind}' is not supported"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            turns.push((role, content));
        }
        let pairs: Vec<(&str, &str)> = turns.iter().map(|(r, c)| (*r, c.as_str())).collect();
        let ids = text::chat_ids(st.model, &st.tok, &pairs).map_err(|e| ApiError::bad(e.to_string()))?;
        let top = if req.logprobs { Some(req.top_logprobs.unwrap_or(0).min(MAX_TOP_LOGPROBS) as usize) } else { None };
        if req.top_logprobs.is_some() && !req.logprobs {
            return Err(ApiError::param("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        let default_max = st.limits.max_tokens as u64;
        Ok((ids, settings(&st, &req.common, top, default_max)?))
    };
    respond(st.clone(), Api::Chat, run()).await
}

pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the server's limit (--max-body)".to_string()
        } else {
            e.body_text()
        };
        ApiError::status(status, message)
    })
}

/// A prompt's ids with BOS where the model asks for it; refused when it does not leave
/// room for a token in the context.
fn encode(st: &TextState, prompt: &str) -> Result<Vec<u32>, ApiError> {
    text::encode_prompt(st.model, &st.tok, prompt, false).map_err(|e| ApiError::bad(e.to_string()))
}

/// A completion request, checked.
struct Settings {
    max_tokens: usize,
    sampler: SamplerConfig,
    stop: Vec<String>,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
}

fn settings(st: &TextState, c: &Common, logprobs: Option<usize>, default_max: u64) -> Result<Settings, ApiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::param("n", "only n = 1 is supported"));
    }
    for (name, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::param(name, format!("{name} is not supported")));
        }
    }
    let max = c.max_completion_tokens.or(c.max_tokens).unwrap_or(default_max.min(st.limits.max_tokens as u64));
    if max == 0 || max > st.limits.max_tokens as u64 {
        return Err(ApiError::param(
            "max_tokens",
            format!("max_tokens must be 1 to {} (the server's --max-tokens)", st.limits.max_tokens),
        ));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::param("temperature", "temperature must be in [0, 2]"));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", "top_p must be in (0, 1]"));
    }
    let stop = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::param("stop", format!("at most {MAX_STOPS} stop strings of {MAX_STOP_BYTES} bytes")));
    }
    let seed =
        c.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let min_p = c.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::param("min_p", "min_p must be in [0, 1]"));
    }
    let top_k = c.top_k.unwrap_or(0).min(st.model.config().vocab as u64) as usize;
    let sampler = SamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty: 1.0, repeat_last_n: 0, seed };
    Ok(Settings {
        max_tokens: max as usize,
        sampler,
        stop,
        logprobs,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        ignore_eos: c.ignore_eos,
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The fields every response and chunk of one request carries.
struct Head {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn new(api: Api, model: &str) -> Head {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Head { api, id: format!("{prefix}-arq{n}"), created, model: model.to_string() }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model,
            "system_fingerprint": "arq", "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
    })
}

/// A sampled token's text, its log-probability, and the most likely alternatives.
type Scored = (String, f64, Vec<(String, f64)>);

/// Token log-probabilities as one call or the other reports them.
#[derive(Default)]
struct Logprobs {
    tokens: Vec<Scored>,
}

impl Logprobs {
    fn add(&mut self, st: &TextState, id: u32, lp: &TokenLogprob) {
        let name = |id: u32| text::token_text(&st.tok, id);
        self.tokens.push((name(id), lp.logprob, lp.top.iter().map(|&(t, l)| (name(t), l)).collect()));
    }

    fn json(&self, api: Api, offset0: usize) -> Value {
        match api {
            Api::Chat => {
                let entry = |t: &str, l: f64| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
                let content: Vec<Value> = self
                    .tokens
                    .iter()
                    .map(|(t, l, top)| {
                        let mut e = entry(t, *l);
                        e["top_logprobs"] = top.iter().map(|(t, l)| entry(t, *l)).collect();
                        e
                    })
                    .collect();
                json!({"content": content})
            }
            Api::Completions => {
                let mut offset = offset0;
                let mut offsets = Vec::new();
                for (t, _, _) in &self.tokens {
                    offsets.push(offset);
                    offset += t.len();
                }
                json!({
                    "tokens": self.tokens.iter().map(|(t, _, _)| t).collect::<Vec<_>>(),
                    "token_logprobs": self.tokens.iter().map(|(_, l, _)| l).collect::<Vec<_>>(),
                    "top_logprobs": self.tokens.iter().map(|(_, _, top)| {
                        top.iter().map(|(t, l)| (t.clone(), json!(l))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }
}

/// Queues the request and answers it: a stream of chunks, or one response at the end.
async fn respond(st: Arc<TextState>, api: Api, parsed: Result<(Vec<u32>, Settings), ApiError>) -> Response {
    let (ids, s) = match parsed {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if ids.len() >= st.limits.ctx {
        return ApiError::param(
            "messages",
            format!("the prompt is {} tokens; the server's context is {} (--ctx)", ids.len(), st.limits.ctx),
        )
        .code("context_length_exceeded")
        .into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let job = GenRequest {
        ids,
        max_tokens: s.max_tokens,
        sampler: s.sampler,
        stop: s.stop,
        logprobs: s.logprobs,
        ignore_eos: s.ignore_eos,
        deadline: engine::deadline(st.limits.timeout),
        events: tx,
    };
    if let Err(e) = st.submit(Job::Generate(job)) {
        return e.into_response();
    }
    let head = Head::new(api, &st.name);
    if s.stream {
        Sse::new(chunks(st, head, rx, s.logprobs.is_some(), s.include_usage))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        whole(st, head, rx, s.logprobs.is_some()).await
    }
}

/// Collects the events of one request into one response.
async fn whole(st: Arc<TextState>, head: Head, mut rx: mpsc::UnboundedReceiver<Event>, want_lp: bool) -> Response {
    let mut text = String::new();
    let mut lps = Logprobs::default();
    loop {
        match rx.recv().await {
            Some(Event::Token { id, text: piece, logprob }) => {
                text.push_str(&piece);
                if let Some(lp) = &logprob {
                    lps.add(&st, id, lp);
                }
            }
            Some(Event::Done(f)) => {
                text.push_str(&f.tail);
                if f.reason == FinishReason::Timeout {
                    return timeout(&st).into_response();
                }
                let lp = if want_lp { lps.json(head.api, 0) } else { Value::Null };
                let choice = match head.api {
                    Api::Completions => {
                        json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": f.reason.name()})
                    }
                    Api::Chat => json!({
                        "index": 0, "message": {"role": "assistant", "content": text},
                        "logprobs": lp, "finish_reason": f.reason.name(),
                    }),
                };
                return Json(head.wrap(false, json!([choice]), Some(usage(&f)))).into_response();
            }
            None => {
                return ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the model engine has stopped")
                    .into_response()
            }
        }
    }
}

fn timeout(st: &TextState) -> ApiError {
    ApiError::status(
        StatusCode::GATEWAY_TIMEOUT,
        format!("the request ran past the server's timeout of {} s (--timeout)", st.limits.timeout.as_secs()),
    )
}

/// The events of one request as server-sent chunks, ending with `[DONE]`. Dropping the
/// stream (the client went away) drops the receiver, which the engine sees and frees
/// the slot.
fn chunks(
    st: Arc<TextState>,
    head: Head,
    rx: mpsc::UnboundedReceiver<Event>,
    want_lp: bool,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct S {
        st: Arc<TextState>,
        head: Head,
        rx: mpsc::UnboundedReceiver<Event>,
        want_lp: bool,
        include_usage: bool,
        sent_role: bool,
        offset: usize,
        tail: Vec<Value>,
        done: bool,
    }
    let s = S { st, head, rx, want_lp, include_usage, sent_role: false, offset: 0, tail: Vec::new(), done: false };
    stream::unfold(s, |mut s| async move {
        if let Some(v) = s.tail.pop() {
            let data = if v.is_null() { "[DONE]".to_string() } else { v.to_string() };
            return Some((Ok(SseEvent::default().data(data)), s));
        }
        if s.done {
            return None;
        }
        let (piece, lp, finish) = match s.rx.recv().await {
            Some(Event::Token { id, text, logprob }) => {
                let mut lps = Logprobs::default();
                if let Some(lp) = &logprob {
                    lps.add(&s.st, id, lp);
                }
                (text, if s.want_lp { Some(lps) } else { None }, None)
            }
            Some(Event::Done(f)) => (f.tail.clone(), None, Some(f)),
            None => {
                s.done = true;
                let e = ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the model engine has stopped");
                return Some((Ok(SseEvent::default().data(e.body().to_string())), s));
            }
        };
        if let Some(f) = &finish {
            s.done = true;
            // Pushed in reverse: popped as [last text chunk], usage chunk, [DONE].
            s.tail.push(Value::Null);
            if f.reason == FinishReason::Timeout {
                return Some((Ok(SseEvent::default().data(timeout(&s.st).body().to_string())), s));
            }
            if s.include_usage {
                s.tail.push(s.head.wrap(true, json!([]), Some(usage(f))));
            }
        }
        let lp_json = lp.map_or(Value::Null, |l| l.json(s.head.api, s.offset));
        s.offset += piece.len();
        let reason = finish.as_ref().map(|f| f.reason.name());
        let choice = match s.head.api {
            Api::Completions => json!({"index": 0, "text": piece, "logprobs": lp_json, "finish_reason": reason}),
            Api::Chat => {
                let mut delta = json!({});
                if !s.sent_role {
                    delta["role"] = json!("assistant");
                    s.sent_role = true;
                }
                if !piece.is_empty() || finish.is_none() {
                    delta["content"] = json!(piece);
                }
                json!({"index": 0, "delta": delta, "logprobs": lp_json, "finish_reason": reason})
            }
        };
        let chunk = s.head.wrap(true, json!([choice]), None);
        Some((Ok(SseEvent::default().data(chunk.to_string())), s))
    })
}
