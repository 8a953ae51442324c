//! The text jobs of `arq generate`, `next` and `score` on a recurrent model (LSTM, GRU):
//! encoding with its word or character vocabulary, exact log-likelihoods (the state
//! carries the whole text, so there are no windows), and generation that writes words
//! joined by spaces as the `word_language_model` example's `generate.py` does.

use anyhow::{anyhow, bail, Result};
use arq::sampler::{Candidate, Sampler};
use arq::tokenizer::{Tokenizer, TokenizerKind};
use arq::{math, Rnn, RnnSession};

use crate::text::Scored;

/// The model's vocabulary; errors say it is the vocabulary that failed.
pub fn tokenizer<'a>(model: &Rnn<'a>) -> Result<Tokenizer<'a>> {
    model.tokenizer().map_err(|e| anyhow!("vocabulary: {e}"))
}

/// `word` or `char`: what one token of the model is.
pub fn level(tok: &Tokenizer<'_>) -> &'static str {
    if tok.kind() == TokenizerKind::Chars {
        "char"
    } else {
        "word"
    }
}

/// The token ids of `text`; refuses a word or character outside a vocabulary that has no
/// `<unk>` (one line naming it).
pub fn encode(tok: &Tokenizer<'_>, text: &str) -> Result<Vec<u32>> {
    if let Some(u) = tok.first_unknown(text) {
        bail!("{} {u:?} is not in the model's vocabulary, which has no <unk>", level(tok));
    }
    Ok(tok.encode(text, false))
}

/// The token a text starts from when the prompt is empty: the line end (`<eos>`, or the
/// character `\n`), else token 0.
pub fn start_token(tok: &Tokenizer<'_>) -> u32 {
    tok.eos().or_else(|| tok.token_id(b"\n")).unwrap_or(0)
}

/// Feeds `ids` (not empty) from the zero state; returns the logits after the last.
pub fn prefill<'s>(session: &'s mut RnnSession<'_>, ids: &[u32]) -> Result<&'s [f32]> {
    let Some((&last, head)) = ids.split_last() else { bail!("nothing to feed") };
    session.reset();
    for &id in head {
        session.step(id)?;
    }
    Ok(session.step(last)?)
}

/// The log-probability of every token of `ids` after the first, each given all the
/// tokens before it (teacher-forced, from the zero state).
pub fn score(session: &mut RnnSession<'_>, ids: &[u32]) -> Result<Vec<Scored>> {
    session.reset();
    let mut scored = Vec::with_capacity(ids.len().saturating_sub(1));
    for (pos, w) in ids.windows(2).enumerate() {
        let logits = session.step(w[0])?;
        let lse = math::log_sum_exp(logits);
        let top = math::argmax(logits);
        scored.push(Scored {
            pos: pos + 1,
            id: w[1],
            logprob: logits[w[1] as usize] as f64 - lse,
            top_id: top as u32,
            top_logprob: logits[top] as f64 - lse,
        });
    }
    Ok(scored)
}

/// Feeds the prompt `ids` (not empty), then samples `n` tokens, handing each one's text
/// to `emit` (a word after a space, or at a line start; `<eos>` as a line end; a
/// character as itself). `line_start`: whether the text so far ends a line. Returns the
/// sampled ids.
pub fn generate(
    session: &mut RnnSession<'_>,
    tok: &Tokenizer<'_>,
    sampler: &mut Sampler,
    ids: &[u32],
    n: usize,
    mut line_start: bool,
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Vec<u32>> {
    let mut logits = prefill(session, ids)?.to_vec();
    let mut scratch = vec![Candidate::default(); logits.len()];
    let mut history = ids.to_vec();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = sampler.sample(&mut logits, &history, &mut scratch).map_err(|e| anyhow!("{e}"))?;
        let (sep, text) = tok.word_text(next, line_start);
        emit(sep)?;
        emit(text)?;
        line_start = Some(next) == tok.eos() || text.ends_with(b"\n");
        history.push(next);
        out.push(next);
        if i + 1 < n {
            logits.copy_from_slice(session.step(next)?);
        }
    }
    Ok(out)
}
