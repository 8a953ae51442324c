//! What the end-to-end tests against reference fixtures share: finding a fetched GGUF,
//! reading fixture arrays, teacher-forced scoring.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use arq::{math, Model, Session, SessionConfig};
use serde_json::Value;

/// The GGUF named by `$var` (which must exist when set), else `models/cache/FILE`, else
/// `None` with a note naming the fetch script: the tests then pass without running.
pub fn fetched_gguf(var: &str, file: &str, fetch: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{var}={} does not exist", p.display());
        return Some(p);
    }
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cache")).join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("note: {file} not found (run models/{fetch}); skipping");
        None
    }
}

/// A fixture's array of ids.
pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A fixture's array of numbers.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Teacher-forced log-probs and argmaxes of `ids[1..]`, in passes of `batch` tokens on
/// `threads` threads.
pub fn teacher_forced(model: &Model<'_>, ids: &[u32], batch: usize, threads: usize) -> (Vec<f64>, Vec<u32>) {
    let cfg = SessionConfig { ctx: ids.len(), batch, threads, ..Default::default() };
    let pool = arq::parallel::ThreadPool::new(threads).unwrap();
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    if threads > 1 {
        s.set_parallel(&pool).unwrap();
    }
    let (mut lps, mut top) = (Vec::new(), Vec::new());
    s.forward_all(ids, |i, logits| {
        if i + 1 < ids.len() {
            lps.push(math::log_prob(logits, ids[i + 1] as usize));
            top.push(math::argmax(logits) as u32);
        }
    })
    .unwrap();
    (lps, top)
}
