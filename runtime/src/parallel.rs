//! Splitting a step's work across threads.
//!
//! The engine asks a [`Parallel`] to run `n` tasks and hands each task a disjoint chunk
//! of its output buffers ([`chunks2`]). [`Serial`] runs them in order (no_std, single
//! thread); with `std`, [`ThreadPool`] keeps its workers alive between steps, so a step
//! never spawns a thread or allocates.

/// Runs `f(0) .. f(n - 1)`, possibly concurrently, and returns when all have finished.
pub trait Parallel: Sync {
    /// How many tasks can run at once.
    fn threads(&self) -> usize;
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the caller's thread, in order.
pub struct Serial;

impl Parallel for Serial {
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
// index to exactly one task, so no two threads touch the same element.
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    fn new(s: &mut [T], chunk: usize) -> Self {
        Chunks { ptr: s.as_mut_ptr(), len: s.len(), chunk: chunk.max(1) }
    }
    fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }
    /// # Safety
    /// Each `i` must be used by at most one task at a time, while the slice `new` took
    /// is still mutably borrowed by the caller of [`chunks2`].
    #[allow(clippy::mut_from_ref)] // the chunks are disjoint; see `# Safety`
    unsafe fn get(&self, i: usize) -> &mut [T] {
        let start = (i * self.chunk).min(self.len);
        let end = (start + self.chunk).min(self.len);
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
        // SAFETY: `run` calls each index once; chunks of distinct indices are disjoint;
        // `a` and `b` stay mutably borrowed until `run` returns.
        unsafe { f(i, ca.get(i), cb.get(i)) }
    });
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
    // claimed in the job's generation, and `run` does not return before every claimed
    // task is done.
    unsafe impl Send for Job {}

    struct Shared {
        /// (generation, job), replaced by `run` for each new job.
        job: Mutex<(u32, Option<Job>)>,
        wake: Condvar,
        /// `generation << 32 | next task index`: a task is claimed by a compare-exchange,
        /// which fails once the generation has moved on, so a late worker can never run
        /// a task of a finished job.
        claim: AtomicU64,
        /// Tasks of the current job that have finished.
        done: AtomicUsize,
        stop: AtomicBool,
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
                        // SAFETY: see `Job`: this task was claimed in `generation`.
                        unsafe { (*job.f)(cur as u32 as usize) };
                        self.done.fetch_add(1, Ordering::AcqRel);
                        cur = self.claim.load(Ordering::Acquire);
                    }
                    Err(now) => cur = now,
                }
            }
        }
    }

    /// A persistent pool: `threads - 1` workers plus the calling thread, which takes
    /// tasks too and never waits for a worker that has not started one (so a worker
    /// descheduled on a busy machine delays nothing). Workers spin briefly between jobs
    /// (a step issues hundreds of small jobs), then sleep.
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
            });
            let mut workers = Vec::new();
            for i in 1..threads.max(1) {
                let s = Arc::clone(&shared);
                workers.push(std::thread::Builder::new().name(format!("arq-worker-{i}")).spawn(move || worker(s))?);
            }
            Ok(ThreadPool { shared, workers, gate: Mutex::new(()) })
        }
    }

    impl Parallel for ThreadPool {
        fn threads(&self) -> usize {
            self.workers.len() + 1
        }

        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            if self.workers.is_empty() || n <= 1 || n > u32::MAX as usize {
                (0..n).for_each(f);
                return;
            }
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: erasing the closure's lifetime is sound because this function does
            // not return before every claimed task has finished (`done == n`), and no
            // task of this generation can be claimed after that.
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
            self.shared.wake.notify_all();
            self.shared.work(generation, job);
            let mut spins = 0u32;
            while self.shared.done.load(Ordering::Acquire) != n {
                if spins < SPIN {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
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
