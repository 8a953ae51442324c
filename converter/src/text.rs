//! The text-model jobs behind `arq generate`, `next` and `score`: prompt encoding (with
//! the model's chat template), session setup, the generation loop, next-token
//! distributions, and exact log-likelihoods over texts longer than the context.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use arq::sampler::{Candidate, Sampler};
use arq::tokenizer::{Tokenizer, Utf8Stream};
use arq::{math, KvDtype, Model, Session, SessionConfig};

/// The model's tokenizer; errors say it is the tokenizer that failed.
pub fn tokenizer<'a>(model: &Model<'a>) -> Result<Tokenizer<'a>> {
    model.tokenizer().map_err(|e| anyhow!("tokenizer: {e}"))
}

/// A token's bytes as text (invalid UTF-8 replaced).
pub fn token_text(tok: &Tokenizer<'_>, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id).unwrap_or(b"")).into_owned()
}

fn bos(model: &Model<'_>) -> (bool, Option<u32>) {
    let file = model.file();
    let add_bos = file.meta("tokenizer.add_bos").and_then(|v| v.as_bool()).unwrap_or(false);
    let bos = file.meta("tokenizer.bos_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    (add_bos, bos)
}

/// The model's end-of-text token, if it names one.
pub fn eos(model: &Model<'_>) -> Option<u32> {
    model.file().meta("tokenizer.eos_id").and_then(|v| v.as_u64()).map(|v| v as u32)
}

/// The conversation `messages` (`(role, content)`: `user`, `assistant`, `system`) in the
/// model's chat template, ready for the assistant's answer. The template sees
/// `bos_token` and `eos_token` as transformers' `apply_chat_template` passes them, and may
/// call `raise_exception`.
fn chat_prompt(model: &Model<'_>, tok: &Tokenizer<'_>, messages: &[(&str, &str)]) -> Result<String> {
    let template = model
        .file()
        .meta("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("--chat: this model has no chat template"))?;
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| anyhow!("chat template: {e}"))?;
    let special = |id: Option<u32>| id.map(|id| token_text(tok, id)).unwrap_or_default();
    env.get_template("chat")
        .and_then(|t| {
            t.render(minijinja::context! {
                messages => messages
                    .iter()
                    .map(|(role, content)| minijinja::context! { role => role, content => content })
                    .collect::<Vec<_>>(),
                add_generation_prompt => true,
                bos_token => special(bos(model).1),
                eos_token => special(eos(model)),
            })
        })
        .map_err(|e| anyhow!("chat template: {e}"))
}

/// The token ids of the conversation `messages` in the model's chat template (special
/// tokens matched whole).
pub fn chat_ids(model: &Model<'_>, tok: &Tokenizer<'_>, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
    Ok(tok.encode(&chat_prompt(model, tok, messages)?, true))
}

/// The prompt's token ids: the chat template (with special tokens) or plain text, with
/// BOS when the model asks for it.
pub fn encode_prompt(model: &Model<'_>, tok: &Tokenizer<'_>, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let (add_bos, bos) = bos(model);
    let mut ids = Vec::new();
    if chat {
        ids.extend(chat_ids(model, tok, &[("user", prompt)])?);
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

/// A session's configuration: `ctx` tokens (default: 2048, or the model's training
/// context if shorter), batches of 32, `threads` workers.
pub fn session_config(model: &Model<'_>, ctx: Option<usize>, kv: KvDtype, threads: usize) -> Result<SessionConfig> {
    let train = model.config().ctx_train;
    let ctx = ctx.unwrap_or(train.min(2048));
    if ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    if ctx > train {
        bail!("--ctx {ctx} is longer than the model's training context ({train})");
    }
    Ok(SessionConfig { ctx, batch: 32, threads, kv, seqs: 1 })
}

/// A zeroed arena of the size `cfg` needs.
pub fn new_arena(model: &Model<'_>, cfg: &SessionConfig) -> Result<Vec<u8>> {
    Ok(vec![0u8; model.memory_plan(cfg)?])
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The requested number of tokens.
    Length,
    /// The end-of-text token or another control token.
    EndOfText,
    /// The session's context is full and too short to shift (fewer than 2 tokens).
    ContextFull,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Length => "length",
            Stop::EndOfText => "end of text",
            Stop::ContextFull => "context full",
        }
    }
}

/// What [`generate`] did, with its timings.
pub struct Generation {
    pub tokens: usize,
    /// The generated tokens (the end-of-text token that stopped it is not among them).
    pub ids: Vec<u32>,
    pub stop: Stop,
    /// How often a full context was shifted (see [`generate`]).
    pub shifts: usize,
    pub prompt_s: f64,
    pub gen_s: f64,
}

/// Runs the prompt `ids`, then samples up to `n` tokens, handing the text to `emit` as
/// soon as it forms whole UTF-8 characters (see [`Generator`]); an error of `emit` ends
/// it, except at the final flush.
pub fn generate(
    session: &mut Session<'_>,
    tok: &Tokenizer<'_>,
    sampler: &mut Sampler,
    ids: &[u32],
    n: usize,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<Generation> {
    let mut g = Generator::start(session, ids, n)?;
    loop {
        let mut io_err = None;
        let more = g.step(session, tok, sampler, |s| {
            if io_err.is_none() {
                io_err = emit(s).err();
            }
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        if !more {
            break;
        }
    }
    Ok(g.finish(|s| {
        let _ = emit(s);
    }))
}

/// Generation one token at a time, for front ends that pull the text (an iterator)
/// rather than receive it: [`Generator::start`] runs the prompt, each
/// [`Generator::step`] samples one token, [`Generator::finish`] flushes what is left of
/// a UTF-8 character and says what happened. [`generate`] is the loop over it.
///
/// Stops after `n` tokens, at the end-of-text token or any control token. A full
/// context is shifted, as llama.cpp's context shift does: the session restarts from the
/// last half of the context's tokens (after the BOS, which stays first when the text
/// began with it), re-encoded at positions from 0 — what learned positions (GPT-2)
/// need, and exact for rotary ones. Generation goes on past the trained context, each
/// token conditioned on the last `ctx/2` to `ctx` tokens.
pub struct Generator {
    eos: Option<u32>,
    bos: Option<u32>,
    /// The prompt and the tokens generated so far.
    history: Vec<u32>,
    prompt_len: usize,
    /// The next token's logits.
    logits: Vec<f32>,
    scratch: Vec<Candidate>,
    stream: Utf8Stream,
    /// Whether the text so far ends a line (a word vocabulary's separator); `None`
    /// before the first token, when the prompt's last token says.
    line_start: Option<bool>,
    n: usize,
    generated: usize,
    shifts: usize,
    stop: Option<Stop>,
    prompt_s: f64,
    started: Instant,
}

impl Generator {
    /// Runs the prompt `ids` in `session` (from its current position); up to `n` tokens
    /// will follow.
    pub fn start(session: &mut Session<'_>, ids: &[u32], n: usize) -> Result<Generator> {
        let model = session.model();
        let t0 = Instant::now();
        let logits = session.prefill(ids)?.to_vec();
        let prompt_s = t0.elapsed().as_secs_f64();
        Ok(Generator {
            eos: eos(model),
            bos: bos(model).1,
            history: ids.to_vec(),
            prompt_len: ids.len(),
            logits,
            scratch: vec![Candidate::default(); model.config().vocab],
            stream: Utf8Stream::new(),
            line_start: None,
            n,
            generated: 0,
            shifts: 0,
            stop: (n == 0).then_some(Stop::Length),
            prompt_s,
            started: Instant::now(),
        })
    }

    /// Samples one token and hands the whole UTF-8 characters it completes to `emit`
    /// (none while a character is incomplete). Returns whether another step may follow.
    pub fn step(
        &mut self,
        session: &mut Session<'_>,
        tok: &Tokenizer<'_>,
        sampler: &mut Sampler,
        mut emit: impl FnMut(&str),
    ) -> Result<bool> {
        if self.stop.is_some() {
            return Ok(false);
        }
        let next = sampler.sample(&mut self.logits, &self.history, &mut self.scratch).map_err(|e| anyhow!("{e}"))?;
        if Some(next) == self.eos || tok.is_control(next) {
            self.stop = Some(Stop::EndOfText);
            return Ok(false);
        }
        self.generated += 1;
        // A word vocabulary (word_language_model) joins words with spaces and turns
        // `<eos>` into a line end, as the example's generate.py writes them; other
        // vocabularies' tokens are their bytes (no separator).
        let line_start = self.line_start.unwrap_or(tok.eos().is_some() && self.history.last().copied() == tok.eos());
        let (sep, text) = tok.word_text(next, line_start);
        self.line_start = Some(Some(next) == tok.eos() || text.ends_with(b"\n"));
        self.history.push(next);
        self.stream.push(sep, &mut emit);
        self.stream.push(text, emit);
        if self.generated == self.n {
            self.stop = Some(Stop::Length);
            return Ok(false);
        }
        let ctx = session.config().ctx;
        if session.pos() >= ctx {
            if ctx < 2 {
                self.stop = Some(Stop::ContextFull);
                return Ok(false);
            }
            // The kept tokens and the new one fill at most ctx/2 + 1 of the context.
            let keep = shifted(&self.history, self.bos, ctx / 2);
            session.reset();
            self.logits.copy_from_slice(session.prefill(&keep)?);
            self.shifts += 1;
            return Ok(true);
        }
        self.logits.copy_from_slice(session.step(next)?);
        Ok(true)
    }

    /// Hands the rest of an incomplete UTF-8 character (replaced) to `emit`, and says
    /// what was generated.
    pub fn finish(mut self, emit: impl FnMut(&str)) -> Generation {
        self.stream.flush(emit);
        Generation {
            tokens: self.generated,
            ids: self.history[self.prompt_len..].to_vec(),
            stop: self.stop.unwrap_or(Stop::Length),
            shifts: self.shifts,
            prompt_s: self.prompt_s,
            gen_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The tokens a shifted context restarts from: the last `keep` of `history` (which ends
/// with the token to feed next), after `bos` when `history` starts with it.
fn shifted(history: &[u32], bos: Option<u32>, keep: usize) -> Vec<u32> {
    let lead = usize::from(bos.is_some() && history.first() == bos.as_ref());
    let keep = keep.saturating_sub(lead).max(1);
    let mut ids = history[..lead].to_vec();
    ids.extend_from_slice(&history[history.len().saturating_sub(keep).max(lead)..]);
    ids
}

#[cfg(test)]
mod tests {
    use super::shifted;

    #[test]
    fn a_shifted_context_keeps_bos_and_the_last_tokens() {
        let h: Vec<u32> = (1..=10).collect();
        assert_eq!(shifted(&h, None, 4), [7, 8, 9, 10]);
        assert_eq!(shifted(&h, Some(1), 4), [1, 8, 9, 10]);
        assert_eq!(shifted(&h, Some(2), 4), [7, 8, 9, 10]);
        assert_eq!(shifted(&h, Some(1), 1), [1, 10]);
        assert_eq!(shifted(&[1, 5], Some(1), 8), [1, 5]);
    }
}

/// The `top` most likely next tokens after `logits` (`top` >= 1), most likely first
/// (ties by id): id and log-probability.
pub fn top_tokens(logits: &[f32], top: usize) -> Vec<(u32, f64)> {
    let lse = math::log_sum_exp(logits);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(order.len());
    order.select_nth_unstable_by(top - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order.truncate(top);
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    order.iter().map(|&id| (id, logits[id as usize] as f64 - lse)).collect()
}

/// A text's token ids for scoring: BOS first when the model asks for it.
pub fn encode_text(model: &Model<'_>, tok: &Tokenizer<'_>, text: &str) -> (Vec<u32>, bool) {
    let (add_bos, bos) = bos(model);
    let mut ids = Vec::new();
    if add_bos {
        ids.extend(bos);
    }
    ids.extend(tok.encode(text, false));
    (ids, add_bos)
}

/// One scored position.
pub struct Scored {
    pub pos: usize,
    pub id: u32,
    pub logprob: f64,
    pub top_id: u32,
    pub top_logprob: f64,
}

/// The log-probability of every token of `ids` after the first (or after
/// `min_context`), with how it was windowed.
pub struct Score {
    pub scored: Vec<Scored>,
    pub windows: usize,
    pub stride: usize,
    pub min_context: usize,
    /// Tokens the windows evaluated (each window's length, summed).
    pub evaluated: usize,
}

/// How [`score_windows`] cuts a text longer than the context into windows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Windows {
    /// How far each window starts after the previous one (1..=ctx); `None`: half the
    /// context, the default.
    pub stride: Option<usize>,
    /// A position is scored only in a window where it has at least this many tokens of
    /// context before it (0..ctx). With `stride = ctx` and `min_context = ctx / 2 + 1`
    /// the positions and contexts are llama-perplexity's: non-overlapping chunks of
    /// `ctx`, each scoring its second half.
    pub min_context: usize,
}

/// The totals of a [`Score`], as `arq score` reports them.
pub struct ScoreSummary {
    /// Scored tokens (every token after the first).
    pub tokens: usize,
    /// Their negative log-likelihood.
    pub nll_nats: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    /// The NLL in bits over the scored tokens' bytes.
    pub bits_per_byte: f64,
    pub bytes: usize,
}

impl Score {
    pub fn summary(&self, tok: &Tokenizer<'_>) -> ScoreSummary {
        let n = self.scored.len();
        let nll: f64 = -self.scored.iter().map(|s| s.logprob).sum::<f64>();
        let bytes: usize = self.scored.iter().map(|s| tok.token_bytes(s.id).map_or(0, |b| b.len())).sum();
        let ln2 = std::f64::consts::LN_2;
        ScoreSummary {
            tokens: n,
            nll_nats: nll,
            bytes,
            perplexity: (nll / n as f64).exp(),
            bits_per_token: nll / n as f64 / ln2,
            bits_per_byte: nll / ln2 / bytes.max(1) as f64,
        }
    }

    /// The score as `arq score --json` prints it (and `/v1/score` answers): totals, the
    /// windowing, and with `per_token` every scored position.
    pub fn to_json(&self, tok: &Tokenizer<'_>, ctx: usize, bos_added: bool, per_token: bool) -> serde_json::Value {
        let t = self.summary(tok);
        let mut v = serde_json::json!({
            "tokens": t.tokens,
            "nll_nats": t.nll_nats,
            "perplexity": t.perplexity,
            "bits_per_token": t.bits_per_token,
            "bits_per_byte": t.bits_per_byte,
            "bytes": t.bytes,
            "bos_added": bos_added,
            "windows": {"count": self.windows, "ctx": ctx, "stride": self.stride, "min_context": self.min_context, "evaluated_tokens": self.evaluated},
        });
        if per_token {
            v["per_token"] = self
                .scored
                .iter()
                .map(|s| serde_json::json!({"pos": s.pos, "id": s.id, "logprob": s.logprob, "top_id": s.top_id, "top_logprob": s.top_logprob}))
                .collect();
        }
        v
    }
}

/// Scores `ids` (at least 2) in windows of the session's context advancing by half of
/// it; each window scores only positions no earlier window scored, conditioned on up to
/// ctx-1 preceding tokens.
pub fn score(session: &mut Session<'_>, ids: &[u32]) -> Result<Score> {
    score_windows(session, ids, Windows::default())
}

/// [`score`] with the windows `w` asks for: each window starts `stride` after the
/// previous one and scores the positions no earlier window scored that have at least
/// `min_context` tokens before them in it (the first window scores from position
/// `max(1, min_context)`).
pub fn score_windows(session: &mut Session<'_>, ids: &[u32], w: Windows) -> Result<Score> {
    let ctx = session.config().ctx;
    let stride = w.stride.unwrap_or(ctx / 2).max(1);
    if stride > ctx {
        bail!("--stride {stride} is longer than the context ({ctx}): tokens between windows would be skipped");
    }
    if w.min_context >= ctx {
        bail!("--min-context {} leaves nothing to score in a context of {ctx}", w.min_context);
    }
    let min_context = w.min_context;
    // The model's kernel tier: the same bits as `math::log_sum_exp`, at its vector width.
    let log_sum_exp = session.model().kernels().log_sum_exp;
    let mut scored: Vec<Scored> = Vec::with_capacity(ids.len());
    let (mut start, mut windows, mut evaluated) = (0, 0, 0);
    loop {
        let end = (start + ctx).min(ids.len());
        let window = &ids[start..end];
        session.reset();
        session.forward_all(window, |i, logits| {
            let target = start + i + 1;
            // Position 0 is only ever a condition. A position skipped for want of
            // context is never scored later: later windows start later still.
            let fresh = scored.last().is_none_or(|s| target > s.pos);
            if target < end && fresh && i + 1 >= min_context {
                let lse = log_sum_exp(logits);
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
        evaluated += window.len();
        if end == ids.len() {
            break;
        }
        start += stride;
    }
    Ok(Score { scored, windows, stride, min_context, evaluated })
}
