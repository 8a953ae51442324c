//! Splitting a step's work across threads.
//!
//! The engine asks a [`Parallel`] to run `n` tasks and hands each task a disjoint chunk
//! of its output buffers ([`chunks2`]). [`Serial`] runs them in order (no_std, single
//! thread); with `std`, [`ThreadPool`] keeps its workers alive between steps, so a step
//! never spawns a thread or allocates.
//!
//! The trait is `unsafe` to implement: [`chunks2`] turns one `&mut` slice into one
//! `&mut` chunk per task index, which is sound only if no index runs twice at once.
//! An unsafe trait (rather than a sealed one) keeps `&dyn Parallel` in the public API
//! and still lets an embedder bring its own executor (a second core, a host runtime),
//! with the obligation written down where the `unsafe impl` is.

/// Runs `f(0) .. f(n - 1)`, possibly concurrently, and returns when all have finished.
///
/// # Safety
///
/// An implementation's [`run`](Parallel::run) must
/// - call `f(i)` at most once for each `i < n`, and never with `i >= n`;
/// - not return, nor unwind, while any call of `f` it started is still running (a
///   panic in `f` may end the job early, skipping calls not yet started).
///
/// Callers such as [`chunks2`] rely on this to give each call exclusive access to its
/// chunk. [`threads`](Parallel::threads) is a sizing hint; soundness does not depend on it.
///
/// A safe impl, which could hand one index to two threads, does not compile:
///
/// ```compile_fail,E0200
/// struct Twice;
/// impl arq::parallel::Parallel for Twice {
///     fn threads(&self) -> usize {
///         2
///     }
///     fn run(&self, _n: usize, f: &(dyn Fn(usize) + Sync)) {
///         std::thread::scope(|s| {
///             s.spawn(|| f(0));
///             f(0);
///         });
///     }
/// }
/// ```
pub unsafe trait Parallel: Sync {
    /// How many tasks can run at once.
    fn threads(&self) -> usize;
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the caller's thread, in order.
pub struct Serial;

// SAFETY: each index once, in order, on the caller's thread, all before returning.
unsafe impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        for i in 0..n {
            f(i);
        }
    }
}

/// A raw view of a slice that tasks carve into disjoint chunks.
struct Chunks<T> {
    ptr: *mut T,
    len: usize,
    chunk: usize,
}

// SAFETY: `Chunks` only hands out chunk `i` to task `i`, and `Parallel::run` gives each
// index to at most one task (the trait's `# Safety`), so no two threads touch the same
// element.
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    fn new(s: &mut [T], chunk: usize) -> Self {
        Chunks { ptr: s.as_mut_ptr(), len: s.len(), chunk: chunk.max(1) }
    }
    fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }
    /// Elements `start..end` (`start <= end <= len`).
    ///
    /// # Safety
    /// Overlapping ranges must not be used at the same time, and only while the slice
    /// `new` took is still mutably borrowed by the caller.
    #[allow(clippy::mut_from_ref)] // the ranges are disjoint; see `# Safety`
    unsafe fn get_range(&self, start: usize, end: usize) -> &mut [T] {
        assert!(start <= end && end <= self.len);
        // SAFETY: in bounds (asserted); disjointness is the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
    /// # Safety
    /// Each `i` must be used by at most one task at a time, while the slice `new` took
    /// is still mutably borrowed by the caller of [`chunks2`].
    #[allow(clippy::mut_from_ref)] // the chunks are disjoint; see `# Safety`
    unsafe fn get(&self, i: usize) -> &mut [T] {
        let start = i.saturating_mul(self.chunk).min(self.len);
        let end = start.saturating_add(self.chunk).min(self.len);
        // SAFETY: in bounds of the original slice; disjoint per `i` (caller contract).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// Splits `a` into chunks of `ca` and `b` into chunks of `cb` and runs
/// `f(i, a_i, b_i)` for each chunk index `i` (as many tasks as `a` has chunks; `b_i` is
/// empty where `b` has fewer). Each task owns its chunks exclusively.
pub fn chunks2<A: Send, B: Send>(
    pool: &dyn Parallel,
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let ca = Chunks::new(a, ca);
    let cb = Chunks::new(b, cb);
    let n = ca.count();
    if n == 1 || pool.threads() == 1 {
        for i in 0..n {
            // SAFETY: sequential, one chunk index at a time, borrows still held above.
            unsafe { f(i, ca.get(i), cb.get(i)) };
        }
        return;
    }
    pool.run(n, &|i| {
        // SAFETY: `run` calls each index at most once and returns (or unwinds) only
        // after every call has finished (`Parallel`'s `# Safety`); chunks of distinct
        // indices are disjoint; `a` and `b` stay mutably borrowed until `run` returns.
        unsafe { f(i, ca.get(i), cb.get(i)) }
    });
}

/// [`chunks2`] with chunks of `a` that differ in size: task `i` of `tasks` gets rows
/// `split(i)..split(i + 1)` of `a` (rows of `row` elements; `split` must be
/// non-decreasing, with `split(0) == 0` and `split(tasks)` at most `a`'s rows) and chunk
/// `i` of `b` in chunks of `cb`. Tasks whose range is empty are skipped.
#[allow(clippy::too_many_arguments)]
pub fn split2<A: Send, B: Send>(
    pool: &dyn Parallel,
    a: &mut [A],
    row: usize,
    tasks: usize,
    split: &(dyn Fn(usize) -> usize + Sync),
    b: &mut [B],
    cb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let rows = a.len() / row.max(1);
    let range = |i: usize| {
        let (s, e) = (split(i).min(rows), split(i + 1).min(rows));
        (s * row, e.max(s) * row)
    };
    // A non-decreasing `split` makes the ranges disjoint, which the tasks rely on.
    assert!((0..tasks).all(|i| split(i) <= split(i + 1)), "split2: split must not decrease");
    let ca = Chunks::new(a, 1);
    let cb = Chunks::new(b, cb);
    let task = |i: usize| {
        let (s, e) = range(i);
        if s < e {
            // SAFETY: the ranges of distinct tasks are disjoint (checked above) and in
            // bounds; chunk `i` of `b` is this task's alone; both slices stay mutably
            // borrowed until every task has returned.
            unsafe { f(i, ca.get_range(s, e), cb.get(i)) }
        }
    };
    if tasks <= 1 || pool.threads() == 1 {
        (0..tasks).for_each(task);
    } else {
        pool.run(tasks, &task);
    }
}

/// `chunks2` over one buffer.
pub fn chunks<A: Send>(pool: &dyn Parallel, a: &mut [A], ca: usize, f: impl Fn(usize, &mut [A]) + Sync) {
    chunks2(pool, a, ca, &mut [] as &mut [u8], 1, |i, x, _| f(i, x));
}

#[cfg(feature = "std")]
pub use pool::ThreadPool;

#[cfg(feature = "std")]
mod pool {
    use super::Parallel;
    use std::any::Any;
    use std::boxed::Box;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::vec::Vec;

    /// The current job: a borrowed closure, valid while `ThreadPool::run` waits.
    #[derive(Clone, Copy)]
    struct Job {
        f: *const (dyn Fn(usize) + Sync),
        n: usize,
    }
    // SAFETY: the pointee is `Sync`; a worker dereferences the pointer only for a task it
    // claimed in the job's generation, and `run` does not return (nor unwind) before
    // every claimed task is done.
    unsafe impl Send for Job {}

    struct Shared {
        /// (generation, job), replaced by `run` for each new job.
        job: Mutex<(u32, Option<Job>)>,
        wake: Condvar,
        /// `generation << 32 | next task index`: a task is claimed by a compare-exchange,
        /// which fails once the generation has moved on, so a late worker can never run
        /// a task of a finished job.
        claim: AtomicU64,
        /// Tasks of the current job that have finished (or were skipped after a panic).
        done: AtomicUsize,
        stop: AtomicBool,
        /// Set when a task of the current job panicked: its remaining tasks are skipped
        /// and `run` re-raises the panic once every claimed task is done.
        panicked: AtomicBool,
        /// The first panicking task's payload (locked only when a task panics).
        payload: Mutex<Option<Box<dyn Any + Send>>>,
    }

    impl Shared {
        /// Runs tasks of generation `generation` until none is left.
        fn work(&self, generation: u32, job: Job) {
            let mut cur = self.claim.load(Ordering::Acquire);
            loop {
                if (cur >> 32) as u32 != generation || (cur as u32 as usize) >= job.n {
                    return;
                }
                match self.claim.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        self.task(job, cur as u32 as usize);
                        self.done.fetch_add(1, Ordering::AcqRel);
                        cur = self.claim.load(Ordering::Acquire);
                    }
                    Err(now) => cur = now,
                }
            }
        }

        /// Runs claimed task `i` unless the job already panicked. A panic stops here, in
        /// the worker and in the caller alike: it neither kills a worker (which would
        /// leave `done` short forever) nor unwinds `run` while workers still hold the
        /// closure.
        fn task(&self, job: Job, i: usize) {
            if self.panicked.load(Ordering::Relaxed) {
                return;
            }
            // SAFETY: see `Job`: this task was claimed in the job's generation, so `run`
            // is still waiting and the closure is alive.
            let f = unsafe { &*job.f };
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(i))) {
                let mut slot = self.payload.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(payload);
                // Published to `run` by the `done` increment that follows.
                self.panicked.store(true, Ordering::Relaxed);
            }
        }

        /// Spins (then yields) until `done` reaches `n`.
        fn wait_done(&self, n: usize) {
            let mut spins = 0u32;
            while self.done.load(Ordering::Acquire) != n {
                if spins < SPIN {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Finishes the published job when dropped: takes the caller's share of the tasks,
    /// then waits for the workers' ones. As a drop guard it does so on every way out of
    /// `run`'s scope, unwinding included, so the lent closure outlives its last call.
    struct Finish<'p> {
        shared: &'p Shared,
        generation: u32,
        job: Job,
    }

    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.shared.work(self.generation, self.job);
            self.shared.wait_done(self.job.n);
        }
    }

    /// A persistent pool: `threads - 1` workers plus the calling thread, which takes
    /// tasks too and never waits for a worker that has not started one (so a worker
    /// descheduled on a busy machine delays nothing). Workers spin briefly between jobs
    /// (a step issues hundreds of small jobs), then sleep.
    ///
    /// A panicking task is re-raised by [`run`](Parallel::run) on the caller's thread
    /// after every task it started has finished (the job's tasks not yet started are
    /// skipped); the pool stays usable.
    pub struct ThreadPool {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        /// Serializes `run` calls from different threads.
        gate: Mutex<()>,
    }

    const SPIN: u32 = 20_000;

    fn worker(shared: Arc<Shared>) {
        let mut seen = 0u32;
        loop {
            let mut spins = 0;
            loop {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                if (shared.claim.load(Ordering::Acquire) >> 32) as u32 != seen {
                    break;
                }
                if spins < SPIN {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    let guard = shared.job.lock().unwrap_or_else(|e| e.into_inner());
                    if guard.0 == seen && !shared.stop.load(Ordering::Acquire) {
                        drop(shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
                    }
                }
            }
            let (generation, job) = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
            seen = generation;
            if let Some(job) = job {
                shared.work(generation, job);
            }
        }
    }

    impl ThreadPool {
        /// A pool running up to `threads` tasks at once (at least 1).
        pub fn new(threads: usize) -> std::io::Result<Self> {
            let shared = Arc::new(Shared {
                job: Mutex::new((0, None)),
                wake: Condvar::new(),
                claim: AtomicU64::new(0),
                done: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                panicked: AtomicBool::new(false),
                payload: Mutex::new(None),
            });
            let mut workers = Vec::new();
            for i in 1..threads.max(1) {
                let s = Arc::clone(&shared);
                workers.push(std::thread::Builder::new().name(format!("arq-worker-{i}")).spawn(move || worker(s))?);
            }
            Ok(ThreadPool { shared, workers, gate: Mutex::new(()) })
        }
    }

    // SAFETY: a task index is claimed by one compare-exchange, so it runs at most once,
    // and only below `n`; `Finish` waits for every claimed task before `run` goes on,
    // on unwinding too; no task can be claimed after the generation moves on.
    unsafe impl Parallel for ThreadPool {
        fn threads(&self) -> usize {
            self.workers.len() + 1
        }

        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            if self.workers.is_empty() || n <= 1 || n > u32::MAX as usize {
                (0..n).for_each(f);
                return;
            }
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: erasing the closure's lifetime is sound because `Finish` below does
            // not let this scope end before every claimed task has finished (`done == n`),
            // and no task of this generation can be claimed after that.
            let f: *const (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(f) };
            let job = Job { f, n };
            self.shared.done.store(0, Ordering::Release);
            let generation = {
                let mut guard = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
                guard.0 = guard.0.wrapping_add(1);
                guard.1 = Some(job);
                self.shared.claim.store((guard.0 as u64) << 32, Ordering::Release);
                guard.0
            };
            let finish = Finish { shared: &self.shared, generation, job };
            self.shared.wake.notify_all();
            drop(finish);
            if self.shared.panicked.load(Ordering::Relaxed) {
                self.shared.panicked.store(false, Ordering::Relaxed);
                let payload = self.shared.payload.lock().unwrap_or_else(|e| e.into_inner()).take();
                // Unlocked first: the gate stays unpoisoned for the next call.
                drop(gate);
                if let Some(payload) = payload {
                    panic::resume_unwind(payload);
                }
            }
        }
    }

    impl Drop for ThreadPool {
        fn drop(&mut self) {
            self.shared.stop.store(true, Ordering::Release);
            {
                let _guard = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
                self.shared.wake.notify_all();
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    /// Runs `f` on its own thread and fails if it takes over a minute, so that a pool
    /// that hangs fails the test instead of blocking the run.
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("ThreadPool::run hung"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(t.join().expect_err("the test thread ended without a result"))
            }
        }
    }

    /// Each index of a job runs exactly once: the pool is usable after a panic.
    fn assert_runs_every_index_once(pool: &ThreadPool) {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        pool.run(hits.len(), &|i| {
            hits[i].fetch_add(1, SeqCst);
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
    }

    #[test]
    fn a_panic_in_the_callers_share_propagates_after_the_workers_finish() {
        within_a_minute(|| {
            for threads in 2..5 {
                let pool = ThreadPool::new(threads).unwrap();
                let caller = std::thread::current().id();
                let caller_started = AtomicBool::new(false);
                let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
                let r = catch_unwind(AssertUnwindSafe(|| {
                    pool.run(4 * threads, &|_| {
                        started.fetch_add(1, SeqCst);
                        if std::thread::current().id() == caller {
                            caller_started.store(true, SeqCst);
                            panic!("caller's share");
                        }
                        // Each worker holds its task until the caller has one, then
                        // outlasts the caller's panic.
                        while !caller_started.load(SeqCst) {
                            std::hint::spin_loop();
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        finished.fetch_add(1, SeqCst);
                    })
                }));
                let msg = *r.expect_err("the panic was swallowed").downcast::<&str>().unwrap();
                assert_eq!(msg, "caller's share");
                // Every task a worker started had finished when `run` unwound (the
                // caller's own one panicked; those not started were skipped).
                assert_eq!(started.load(SeqCst), finished.load(SeqCst) + 1, "{threads} threads");
                assert_runs_every_index_once(&pool);
            }
        });
    }

    #[test]
    fn a_panic_in_a_worker_propagates_to_the_caller_instead_of_hanging() {
        within_a_minute(|| {
            for threads in 2..5 {
                let pool = ThreadPool::new(threads).unwrap();
                let caller = std::thread::current().id();
                let worker_started = AtomicBool::new(false);
                let r = catch_unwind(AssertUnwindSafe(|| {
                    pool.run(4 * threads, &|i| {
                        if std::thread::current().id() != caller {
                            worker_started.store(true, SeqCst);
                            panic!("worker task {i}");
                        }
                        // The caller holds its task until a worker has one, so that
                        // one surely runs on a worker.
                        while !worker_started.load(SeqCst) {
                            std::hint::spin_loop();
                        }
                    })
                }));
                let msg = r.expect_err("the panic was swallowed").downcast::<String>().unwrap();
                assert!(msg.starts_with("worker task"), "{msg}");
                assert_runs_every_index_once(&pool);
            }
        });
    }

    #[test]
    fn every_chunk_is_visited_once_with_its_partner() {
        for threads in 1..4 {
            let pool = ThreadPool::new(threads).unwrap();
            for round in 0..200 {
                let mut a = vec![0u32; 37 + round % 5];
                let mut b = vec![0u32; 8];
                chunks2(&pool, &mut a, 5, &mut b, 1, |i, xa, xb| {
                    for v in xa.iter_mut() {
                        *v += i as u32 + 1;
                    }
                    if let Some(v) = xb.first_mut() {
                        *v += 1;
                    }
                });
                for (j, v) in a.iter().enumerate() {
                    assert_eq!(*v, (j / 5) as u32 + 1);
                }
                assert!(b.iter().all(|&v| v == 1));
            }
        }
    }
}
