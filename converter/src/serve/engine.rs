//! The text engine of `arq serve`: one thread that owns the session and runs every
//! request's model work, so the HTTP side never touches the weights.
//!
//! The session holds one sequence per slot ([`SessionConfig::seqs`]). Each turn of the
//! loop admits queued requests into free slots, feeds prompts (a bounded chunk per slot,
//! so a long prompt does not stall the streams already running), samples every slot
//! whose logits are ready, and then advances all decoding slots with one
//! [`Session::step_seqs`]: one pass over the weights serves every stream, which is where
//! concurrent streams gain on a memory-bound CPU (continuous batching).
//!
//! A slot keeps the tokens in its cache after its request ends. A new request goes to the
//! free slot whose cached tokens share the longest prefix with its prompt, and only the
//! rest is fed (prefix reuse): the next keystroke of the same text costs one token or two.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use arq::sampler::{Candidate, Sampler, SamplerConfig};
use arq::tokenizer::{Tokenizer, Utf8Stream};
use arq::{math, Model, Session};
use tokio::sync::{mpsc, oneshot};

use crate::text;

/// Tokens one slot feeds per turn while other slots are decoding: bounds the pause a new
/// prompt puts into the running streams.
const PREFILL_CHUNK: usize = 128;

/// A unit of model work.
pub enum Job {
    Generate(GenRequest),
    Next(NextRequest),
    Score(ScoreRequest),
}

/// A completion: the prompt's ids and how to sample after them.
pub struct GenRequest {
    pub ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop strings: the text ends before the first of them (which is not sent).
    pub stop: Vec<String>,
    /// `Some(k)`: each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Never sample the end-of-text token (llama-server's `ignore_eos`, for benchmarks).
    pub ignore_eos: bool,
    pub deadline: Instant,
    pub events: mpsc::UnboundedSender<Event>,
}

/// What a completion streams back.
pub enum Event {
    /// One sampled token, with the text it completes (empty while a character or a
    /// possible stop string is incomplete).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done(Finish),
}

pub struct TokenLogprob {
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The end-of-text token or a stop string.
    Stop,
    /// `max_tokens`, or the slot's context is full.
    Length,
    /// The request ran past the server's `--timeout`.
    Timeout,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Timeout => "timeout",
        }
    }
}

pub struct Finish {
    pub reason: FinishReason,
    /// Text held back for a stop string that did not come.
    pub tail: String,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the slot's cache (not fed again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// The next-token distribution after a prompt (`/v1/next`).
pub struct NextRequest {
    pub ids: Vec<u32>,
    pub top: usize,
    pub reply: oneshot::Sender<Result<NextReply, String>>,
}

pub struct NextReply {
    pub top: Vec<(u32, f64)>,
    pub cached_tokens: usize,
    /// Model time: prefix lookup, feeding, the distribution.
    pub seconds: f64,
}

/// Exact log-likelihood of a text (`/v1/score`).
pub struct ScoreRequest {
    pub ids: Vec<u32>,
    pub reply: oneshot::Sender<Result<text::Score, String>>,
}

/// One sequence of the session.
#[derive(Default)]
struct Slot {
    /// The tokens in this sequence's KV cache, in order.
    cached: Vec<u32>,
    /// When it was last given a request (for choosing among equal prefixes).
    used: u64,
    active: Option<Active>,
}

/// A completion running in a slot.
struct Active {
    req: GenRequest,
    /// Prompt tokens still to feed.
    pending: Vec<u32>,
    /// Logits after the last fed token, when ready to sample.
    logits: Vec<f32>,
    ready: bool,
    /// The sampled token to feed in the next batched step.
    feed: Option<u32>,
    sampler: Sampler,
    /// Prompt and generated tokens (the repetition window of the sampler).
    history: Vec<u32>,
    utf8: Utf8Stream,
    stops: StopScan,
    generated: usize,
    cached_tokens: usize,
}

pub struct Engine<'a> {
    model: &'a Model<'a>,
    tok: Tokenizer<'a>,
    session: Session<'a>,
    slots: Vec<Slot>,
    clock: u64,
    eos: Option<u32>,
    scratch: Vec<Candidate>,
}

impl<'a> Engine<'a> {
    pub fn new(model: &'a Model<'a>, tok: Tokenizer<'a>, session: Session<'a>) -> Engine<'a> {
        let n = session.config().seqs;
        let vocab = model.config().vocab;
        Engine {
            model,
            tok,
            session,
            slots: (0..n).map(|_| Slot::default()).collect(),
            clock: 0,
            eos: text::eos(model),
            scratch: vec![Candidate::default(); vocab],
        }
    }

    /// Serves jobs until every sender of `jobs` is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            // Admit queued jobs while a slot is free; wait for one when nothing runs.
            while self.slots.iter().any(|s| s.active.is_none()) {
                let idle = self.slots.iter().all(|s| s.active.is_none());
                let job = if idle {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                self.admit(job);
            }
            let busy = self.slots.iter().filter(|s| s.active.as_ref().is_some_and(|a| a.pending.is_empty())).count();
            for i in 0..self.slots.len() {
                self.feed_prompt(i, if busy > 0 { PREFILL_CHUNK } else { usize::MAX });
            }
            for i in 0..self.slots.len() {
                self.sample(i);
            }
            self.decode_step();
        }
    }

    fn admit(&mut self, job: Job) {
        match job {
            Job::Generate(req) => self.start(req),
            Job::Next(req) => {
                let out = self.next(&req.ids, req.top);
                let _ = req.reply.send(out);
            }
            Job::Score(req) => {
                let out = self.score(&req.ids);
                let _ = req.reply.send(out);
            }
        }
    }

    /// The free slot whose cache shares the longest prefix with `ids` (the least
    /// recently used among equals), rewound to that prefix, keeping at least one token of
    /// `ids` to feed so there are logits to read. Returns the slot and the reused length.
    fn claim(&mut self, ids: &[u32]) -> (usize, usize) {
        let common = |s: &Slot| s.cached.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(_, s)| (common(s), std::cmp::Reverse(s.used)))
            .expect("claim is called with a free slot");
        self.clock += 1;
        self.slots[i].used = self.clock;
        let mut keep = common(&self.slots[i]).min(ids.len().saturating_sub(1));
        // Infallible: `i` is below the session's sequence count.
        let _ = self.session.select(i);
        if self.session.truncate(keep).is_err() {
            // A sliding-window cache cannot rewind that far: start the sequence over.
            self.session.reset();
            keep = 0;
        }
        self.slots[i].cached.truncate(keep);
        (i, keep)
    }

    fn start(&mut self, req: GenRequest) {
        let ctx = self.session.config().ctx;
        if req.ids.is_empty() || req.ids.len() >= ctx {
            // The HTTP side checks both; a finished event keeps the client from waiting.
            let _ = req.events.send(Event::Done(Finish {
                reason: FinishReason::Length,
                tail: String::new(),
                prompt_tokens: req.ids.len(),
                cached_tokens: 0,
                completion_tokens: 0,
            }));
            return;
        }
        let (i, keep) = self.claim(&req.ids);
        let sampler = match Sampler::new(req.sampler) {
            Ok(s) => s,
            Err(_) => unreachable!("sampler settings are checked by the HTTP side"),
        };
        let stops = StopScan::new(req.stop.clone());
        self.slots[i].active = Some(Active {
            pending: req.ids[keep..].to_vec(),
            history: req.ids.clone(),
            logits: vec![0.0; self.model.config().vocab],
            ready: false,
            feed: None,
            sampler,
            utf8: Utf8Stream::new(),
            stops,
            generated: 0,
            cached_tokens: keep,
            req,
        });
    }

    /// Feeds up to `limit` of slot `i`'s pending prompt tokens; the last of them leaves
    /// its logits ready to sample.
    fn feed_prompt(&mut self, i: usize, limit: usize) {
        let slot = &mut self.slots[i];
        let Some(a) = slot.active.as_mut().filter(|a| !a.pending.is_empty()) else { return };
        let n = a.pending.len().min(limit);
        let _ = self.session.select(i);
        match self.session.prefill(&a.pending[..n]) {
            Ok(logits) => {
                slot.cached.extend_from_slice(&a.pending[..n]);
                a.pending.drain(..n);
                if a.pending.is_empty() {
                    a.logits.copy_from_slice(logits);
                    a.ready = true;
                }
            }
            // The prompt was checked to fit; an error here is a bug, and ends the request.
            Err(_) => self.finish(i, FinishReason::Length),
        }
    }

    /// Samples slot `i`'s next token if its logits are ready, sends it, and either ends
    /// the request or queues the token for the next batched step.
    fn sample(&mut self, i: usize) {
        let ctx = self.session.config().ctx;
        let cached = self.slots[i].cached.len();
        let Some(a) = self.slots[i].active.as_mut().filter(|a| a.ready) else { return };
        if a.req.events.is_closed() {
            // The client went away: free the slot (its cache stays reusable).
            self.slots[i].active = None;
            return;
        }
        if Instant::now() >= a.req.deadline {
            return self.finish(i, FinishReason::Timeout);
        }
        a.ready = false;
        let logprob = a.req.logprobs.map(|k| {
            let lse = math::log_sum_exp(&a.logits);
            (lse, k)
        });
        let raw: Option<(f64, Vec<(u32, f64)>)> =
            logprob.map(|(lse, k)| (lse, if k > 0 { text::top_tokens(&a.logits, k) } else { Vec::new() }));
        let raw_logits = raw.as_ref().map(|_| a.logits.clone());
        if let Some(l) = self.eos.filter(|_| a.req.ignore_eos).and_then(|e| a.logits.get_mut(e as usize)) {
            *l = f32::NEG_INFINITY;
        }
        let next = match a.sampler.sample(&mut a.logits, &a.history, &mut self.scratch) {
            Ok(t) => t,
            Err(_) => return self.finish(i, FinishReason::Stop),
        };
        if Some(next) == self.eos || self.tok.is_control(next) {
            return self.finish(i, FinishReason::Stop);
        }
        a.generated += 1;
        a.history.push(next);
        let mut piece = String::new();
        a.utf8.push(self.tok.token_bytes(next).unwrap_or(b""), |s| piece.push_str(s));
        let (text, stopped) = a.stops.push(&piece);
        let logprob = raw
            .zip(raw_logits)
            .map(|((lse, top), logits)| TokenLogprob { logprob: logits[next as usize] as f64 - lse, top });
        if a.req.events.send(Event::Token { id: next, text, logprob }).is_err() {
            self.slots[i].active = None;
            return;
        }
        if stopped {
            return self.finish(i, FinishReason::Stop);
        }
        if a.generated >= a.req.max_tokens || cached >= ctx {
            return self.finish(i, FinishReason::Length);
        }
        a.feed = Some(next);
    }

    /// One pass over the weights for every slot with a token to feed.
    fn decode_step(&mut self) {
        let (seqs, toks): (Vec<usize>, Vec<u32>) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.active.as_ref().and_then(|a| a.feed).map(|t| (i, t)))
            .unzip();
        if seqs.is_empty() {
            return;
        }
        let vocab = self.model.config().vocab;
        match self.session.step_seqs(&seqs, &toks) {
            Ok(logits) => {
                for ((&i, &t), row) in seqs.iter().zip(&toks).zip(logits.chunks_exact(vocab)) {
                    let slot = &mut self.slots[i];
                    slot.cached.push(t);
                    if let Some(a) = slot.active.as_mut() {
                        a.logits.copy_from_slice(row);
                        a.feed = None;
                        a.ready = true;
                    }
                }
            }
            Err(_) => seqs.iter().for_each(|&i| self.finish(i, FinishReason::Length)),
        }
    }

    /// Ends slot `i`'s request with `reason`, sending what text is left.
    fn finish(&mut self, i: usize, reason: FinishReason) {
        let Some(mut a) = self.slots[i].active.take() else { return };
        let mut tail = String::new();
        a.utf8.flush(|s| tail.push_str(s));
        let (mut tail, stopped) = a.stops.push(&tail);
        if !stopped {
            tail.push_str(&a.stops.held);
        }
        let _ = a.req.events.send(Event::Done(Finish {
            reason,
            tail,
            prompt_tokens: a.req.ids.len(),
            cached_tokens: a.cached_tokens,
            completion_tokens: a.generated,
        }));
    }

    fn next(&mut self, ids: &[u32], top: usize) -> Result<NextReply, String> {
        let t0 = Instant::now();
        if ids.is_empty() || ids.len() > self.session.config().ctx {
            return Err(format!(
                "the text is {} tokens; the server's context is {}",
                ids.len(),
                self.session.config().ctx
            ));
        }
        let (i, keep) = self.claim(ids);
        let logits = self.session.prefill(&ids[keep..]).map_err(|e| e.to_string())?;
        let top = text::top_tokens(logits, top);
        self.slots[i].cached.extend_from_slice(&ids[keep..]);
        Ok(NextReply { top, cached_tokens: keep, seconds: t0.elapsed().as_secs_f64() })
    }

    fn score(&mut self, ids: &[u32]) -> Result<text::Score, String> {
        // Scoring rewrites the cache window by window: the least recently used free slot.
        let (i, _) = self.claim(&[]);
        let s = text::score(&mut self.session, ids).map_err(|e| e.to_string());
        let slot = &mut self.slots[i];
        slot.cached.clear();
        match &s {
            Ok(r) if r.windows == 1 => slot.cached.extend_from_slice(ids),
            _ => self.session.reset(),
        }
        s
    }
}

/// Holds back generated text that may be the start of a stop string, and cuts the text
/// at the first stop string.
pub struct StopScan {
    stops: Vec<String>,
    held: String,
}

impl StopScan {
    pub fn new(stops: Vec<String>) -> StopScan {
        StopScan { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds `piece`; returns the text that can be sent, and whether a stop string ended it.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // The longest suffix of the held text that begins some stop string stays held.
        let keep = self
            .held
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| self.stops.iter().any(|s| s.starts_with(&self.held[at..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }
}

/// The request timeout's deadline from now.
pub fn deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

#[cfg(test)]
mod tests {
    use super::StopScan;

    #[test]
    fn stop_strings_cut_the_text_and_partial_ones_are_held() {
        let mut s = StopScan::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        assert_eq!(s.push(" wor\n"), (" wor".into(), false));
        assert_eq!(s.push("x E"), ("\nx ".into(), false));
        assert_eq!(s.push("N"), ("".into(), false));
        assert_eq!(s.push("Dless"), ("".into(), true));
        let mut s = StopScan::new(vec!["é!".into()]);
        assert_eq!(s.push("café"), ("caf".into(), false));
        assert_eq!(s.push("?"), ("é?".into(), false));
        let mut none = StopScan::new(vec![String::new()]);
        assert_eq!(none.push("ab"), ("ab".into(), false));
    }
}
