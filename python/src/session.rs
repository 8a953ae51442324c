//! `arq.Session` (tokens in, logits out, step by step) and the iterator `Model.generate`
//! returns. Each owns an [`OwnedSession`] behind a mutex: a second Python thread using
//! the same object waits (with the GIL released) instead of racing. Dropping the
//! object, or exhausting the iterator, frees the session's memory.

use std::sync::{Mutex, MutexGuard};

use anyhow::Result;
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;

use arq::sampler::Sampler;
use arq_convert::text::{Generator, Stop};

use crate::owned::{Kind, OwnedSession};
use crate::{bad_argument, to_py, ArqError, Blame};

fn lock<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    // A panic inside a call (an arq bug) poisons the lock; the object is then refused
    // rather than used in an unknown state.
    m.lock().map_err(|_| ArqError::new_err("this object is unusable after an internal error"))
}

struct SessionState {
    session: OwnedSession,
    /// The logits after the last token fed (empty before the first feed).
    logits: Vec<f32>,
}

/// A text model's session: a KV cache of `ctx` tokens. `feed` runs tokens from the
/// current position; `logits` is the next-token distribution after the last one.
#[pyclass(module = "arq._arq", frozen, weakref)]
pub struct Session {
    state: Mutex<SessionState>,
    vocab: usize,
    ctx: usize,
}

impl Session {
    pub fn new(session: OwnedSession, vocab: usize) -> Session {
        let mut session = session;
        let ctx = session.with(|s| s.config().ctx);
        Session { state: Mutex::new(SessionState { session, logits: Vec::new() }), vocab, ctx }
    }
}

#[pymethods]
impl Session {
    /// Runs the token ids `ids` (at least one) from the current position.
    fn feed(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<()> {
        if ids.is_empty() {
            return Err(bad_argument("feed needs at least one token id"));
        }
        py.detach(|| {
            let mut st = lock(&self.state)?;
            let SessionState { session, logits } = &mut *st;
            session
                .with(|s| -> Result<()> {
                    let out = s.prefill(&ids)?;
                    logits.clear();
                    logits.extend_from_slice(out);
                    Ok(())
                })
                .map_err(|e| to_py(e, Blame::Argument))
        })
    }

    /// The logits after the last token fed: a new float32 array of the vocabulary's
    /// size (a copy: a view would change under its reader at the next `feed`).
    fn logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let st = py.detach(|| lock(&self.state).map(|st| st.logits.clone()))?;
        if st.is_empty() {
            return Err(bad_argument("no logits yet: feed tokens first"));
        }
        Ok(st.into_pyarray(py))
    }

    /// Tokens in the KV cache.
    #[getter]
    fn pos(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| lock(&self.state).map(|mut st| st.session.with(|s| s.pos())))
    }

    #[getter]
    fn ctx(&self) -> usize {
        self.ctx
    }

    #[getter]
    fn vocab(&self) -> usize {
        self.vocab
    }

    /// Empties the KV cache.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let mut st = lock(&self.state)?;
            st.session.with(|s| s.reset());
            st.logits.clear();
            Ok(())
        })
    }

    /// Keeps the first `pos` cached tokens; feed again before reading logits.
    fn truncate(&self, py: Python<'_>, pos: usize) -> PyResult<()> {
        py.detach(|| {
            let mut st = lock(&self.state)?;
            st.session.with(|s| s.truncate(pos)).map_err(|e| to_py(e.into(), Blame::Argument))?;
            st.logits.clear();
            Ok(())
        })
    }
}

struct GenState {
    /// `None` once generation has finished: the session is freed then.
    running: Option<(OwnedSession, Generator)>,
    sampler: Sampler,
    /// Set when finished: the generated ids and why it stopped.
    done: Option<(Vec<u32>, Stop)>,
}

/// The iterator of `Model.generate`: yields the generated text piece by piece. After
/// the last piece, `stop` says why it ended and `ids` holds the generated token ids.
#[pyclass(module = "arq._arq", frozen, weakref)]
pub struct Generation {
    state: Mutex<GenState>,
    prompt_tokens: usize,
}

impl Generation {
    /// Runs the prompt `ids` in `session`; nothing is sampled until the first `next`.
    pub fn start(mut session: OwnedSession, sampler: Sampler, ids: &[u32], n: usize) -> Result<Generation> {
        let generator = session.with(|s| Generator::start(s, ids, n))?;
        Ok(Generation {
            state: Mutex::new(GenState { running: Some((session, generator)), sampler, done: None }),
            prompt_tokens: ids.len(),
        })
    }
}

/// The next piece of text, or `None` at the end (then the session is freed).
fn next_piece(st: &mut GenState) -> Result<Option<String>> {
    let mut text = String::new();
    while let Some((session, generator)) = st.running.as_mut() {
        let owner = session.owner().clone();
        let Kind::Text { tok, .. } = owner.kind() else { anyhow::bail!("a generation needs a text model") };
        let sampler = &mut st.sampler;
        let more = session.with(|s| generator.step(s, tok, sampler, |p| text.push_str(p)))?;
        if !more {
            if let Some((session, generator)) = st.running.take() {
                let g = generator.finish(|p| text.push_str(p));
                st.done = Some((g.ids, g.stop));
                drop(session);
            }
        }
        if !text.is_empty() {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

#[pymethods]
impl Generation {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        py.detach(|| {
            let mut st = lock(&self.state)?;
            let piece = next_piece(&mut st);
            if piece.is_err() {
                // An error ends the generation; its session goes with it.
                st.running = None;
            }
            piece.map_err(|e| to_py(e, Blame::Argument))
        })
    }

    /// Why generation stopped (`"length"`, `"end of text"`, `"context full"`); `None`
    /// while it runs.
    #[getter]
    fn stop(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        // Locks with the GIL released, as every method here: a thread inside `__next__`
        // holds the lock and needs the GIL back to return.
        py.detach(|| Ok(lock(&self.state)?.done.as_ref().map(|d| d.1.name())))
    }

    /// The generated token ids once finished (the end-of-text token excluded).
    #[getter]
    fn ids(&self, py: Python<'_>) -> PyResult<Option<Vec<u32>>> {
        py.detach(|| Ok(lock(&self.state)?.done.as_ref().map(|d| d.0.clone())))
    }

    #[getter]
    fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Ends the generation now and frees its session (what `break` and `del` do too).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            lock(&self.state)?.running = None;
            Ok(())
        })
    }
}
