//! The two self-referential owners Python needs, and the only `unsafe` of this crate.
//!
//! arq's types borrow: a `Model<'a>` borrows the file's bytes, a `Session<'a>` borrows
//! the model, its arena and its thread pool. Python objects cannot carry lifetimes, so
//! [`Owned`] keeps a model with the file it borrows, and [`OwnedSession`] a session with
//! the arena and pool it borrows and an `Arc` of the [`Owned`] model. Each erases the
//! borrows' lifetimes to `'static` and argues below why no borrow outlives what it
//! points to: the borrowed memory never moves, is never written through another path,
//! and is freed only after the borrower is dropped. Nothing here is reachable by other
//! means than the methods that hand out borrows no longer than `&self`.

use std::mem::ManuallyDrop;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use arq::parallel::ThreadPool;
use arq::tokenizer::Tokenizer;
use arq::{Model, PixelCnn, Session, SessionConfig};
use arq_convert::model::{Loaded, ModelFile};

/// What an [`Owned`] file holds.
pub enum Kind<'a> {
    Text { model: Model<'a>, tok: Tokenizer<'a> },
    Pixel(PixelCnn<'a>),
}

/// A model file mapped once and the model loaded from it.
pub struct Owned {
    // Fields drop in declaration order: `kind` borrows the bytes `file` maps, so it
    // comes first.
    kind: Kind<'static>,
    file: ModelFile,
}

impl Owned {
    pub fn open(path: &Path) -> Result<Owned> {
        let file = ModelFile::open(path)?;
        let loaded = file.load()?;
        let kind = match loaded {
            Loaded::Text(model) => {
                let tok = arq_convert::text::tokenizer(&model)?;
                Kind::Text { model, tok }
            }
            Loaded::Pixel(model) => Kind::Pixel(model),
            Loaded::Graph(_) => {
                anyhow::bail!("{}: pixel-graph models are not supported by the Python package yet", path.display())
            }
            Loaded::Recurrent(_) => {
                anyhow::bail!("{}: recurrent models are not supported by the Python package yet", path.display())
            }
        };
        // SAFETY: `kind` borrows only the bytes of `file`'s read-only mapping (or its
        // aligned heap copy), which `ModelFile` owns behind a pointer: their address
        // does not change when `file` moves into the struct below, nothing writes them,
        // and they are unmapped when `file` drops, after `kind` (field order). The
        // `'static` never leaves this type: [`Owned::kind`] lends it for `&self` only.
        let kind = unsafe { std::mem::transmute::<Kind<'_>, Kind<'static>>(kind) };
        Ok(Owned { kind, file })
    }

    /// The model, borrowed no longer than `self`.
    pub fn kind(&self) -> &Kind<'_> {
        &self.kind
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// Sessions alive now (tests check that a dropped iterator frees its session).
static LIVE_SESSIONS: AtomicUsize = AtomicUsize::new(0);

pub fn live_sessions() -> usize {
    LIVE_SESSIONS.load(Ordering::Relaxed)
}

/// A text model's session with its arena and thread pool, sharing the model.
pub struct OwnedSession {
    session: ManuallyDrop<Session<'static>>,
    /// The arena `session` carved, from `Box::into_raw`; freed in `Drop` after `session`.
    /// A raw pointer, not a `Box`: moving a `Box` asserts unique access to its contents,
    /// which `session`'s borrows of it would contradict.
    arena: NonNull<[u8]>,
    /// Shared (`Arc`) rather than boxed for the same reason.
    _pool: Arc<ThreadPool>,
    owner: Arc<Owned>,
}

// SAFETY: every part of `OwnedSession` may move to another thread: the arena is owned
// (only `session` reaches it), `ThreadPool` is `Sync` (a `Parallel`), `Owned` is `Sync`
// (checked below), and the session's `&mut` slices into the arena are `Send`. The one
// field of `Session` that is not `Send`, its `Option<&dyn Offload>` (a GPU backend), is
// never set here: this crate never calls `Session::set_offload`.
unsafe impl Send for OwnedSession {}

const _: () = {
    const fn sync_and_send<T: Sync + Send>() {}
    sync_and_send::<Owned>();
    sync_and_send::<ThreadPool>();
};

impl OwnedSession {
    /// A session of `cfg` on the text model of `owner`, with `cfg.threads` workers.
    pub fn new(owner: Arc<Owned>, cfg: SessionConfig) -> Result<OwnedSession> {
        let Kind::Text { model, .. } = owner.kind() else {
            anyhow::bail!("{} is a PixelCNN image model, which has no text sessions", owner.path().display());
        };
        let pool =
            Arc::new(ThreadPool::new(cfg.threads).map_err(|e| anyhow::anyhow!("cannot start worker threads: {e}"))?);
        let arena = NonNull::from(Box::leak(arq_convert::text::new_arena(model, &cfg)?.into_boxed_slice()));
        let free_arena = || {
            // SAFETY: `arena` came from `Box::leak` above and nothing borrows it any more.
            drop(unsafe { Box::from_raw(arena.as_ptr()) })
        };
        // SAFETY (the three `'static` borrows): `model` lives in the `Owned` that
        // `self.owner` keeps alive; the arena is freed in `Drop` only after `session`;
        // the pool is an `Arc` field dropped after `session` too. None of them moves:
        // the model sits in an `Arc`'s allocation, the arena and pool on the heap. The
        // arena is reached only through `session`. The `'static` session is lent out
        // only by [`OwnedSession::with`], to a closure generic over its lifetime.
        let model: &'static Model<'static> = unsafe { &*(model as *const Model<'_>).cast::<Model<'static>>() };
        let arena_ref: &'static mut [u8] = unsafe { &mut *arena.as_ptr() };
        let mut session = match Session::new(model, arena_ref, cfg) {
            Ok(s) => s,
            Err(e) => {
                free_arena();
                return Err(e.into());
            }
        };
        // SAFETY: the pool's `Arc` becomes a field of the value returned below, dropped
        // after `session` (see above); `Arc::as_ptr` points at its shared allocation.
        let pool_ref: &'static ThreadPool = unsafe { &*Arc::as_ptr(&pool) };
        if let Err(e) = session.set_parallel(pool_ref) {
            // `session` (no destructor) is not used again before its arena goes.
            free_arena();
            return Err(e.into());
        }
        LIVE_SESSIONS.fetch_add(1, Ordering::Relaxed);
        Ok(OwnedSession { session: ManuallyDrop::new(session), arena, _pool: pool, owner })
    }

    pub fn owner(&self) -> &Arc<Owned> {
        &self.owner
    }

    /// Runs `f` on the session; `f` cannot keep any borrow of it.
    pub fn with<R>(&mut self, f: impl for<'s> FnOnce(&mut Session<'s>) -> R) -> R {
        f(&mut self.session)
    }
}

impl Drop for OwnedSession {
    fn drop(&mut self) {
        // SAFETY: `session` is dropped once, here, before the arena it borrows is freed;
        // the arena came from `Box::leak` in `new` and nothing else points into it.
        unsafe {
            ManuallyDrop::drop(&mut self.session);
            drop(Box::from_raw(self.arena.as_ptr()));
        }
        LIVE_SESSIONS.fetch_sub(1, Ordering::Relaxed);
    }
}
