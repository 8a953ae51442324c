//! The bounded fuzz run of the test command: for each target, every seed is replayed,
//! then seeds are mutated (bit flips, bytes set, inserts, deletes, truncations, integer
//! extremes spliced in, cross-overs of two seeds) for `ARQ_FUZZ_SECONDS` seconds
//! (default 8 per target). Each call runs under `catch_unwind`; a panic writes the input
//! to `$CARGO_TARGET_TMPDIR/fuzz-crash-<target>-<n>` and fails the target's test naming
//! the file, the seed and case, and the panic message and location.
//!
//! Seeds: the files of `fuzz/corpus/<target>/`, plus committed repository files too large
//! to copy into the corpus (the models), plus small inputs built here (ONNX protos).
//! `ARQ_FUZZ_SEED` picks another mutation stream; each case draws from its own stream,
//! so a seed and case replay one input.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use prost::Message;
use tract_onnx::pb;

type Target = fn(&[u8]) -> &'static str;

/// xorshift64: a seeded, dependency-free stream of mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EXTREMES: [u64; 18] = [
    0,
    1,
    2,
    7,
    8,
    31,
    63,
    64,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 63,
    u64::MAX - 63,
    u64::MAX,
];

/// A position to mutate: half the time in the first 4 KiB, where every format here keeps
/// its header and directory (mutations of weight bytes change numbers, not structure).
fn position(rng: &mut Rng, len: usize) -> usize {
    if rng.below(2) == 0 {
        rng.below(len.min(4096))
    } else {
        rng.below(len)
    }
}

/// One to four mutations of `input`, or a cross-over with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut buf = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if buf.is_empty() {
            buf.extend((0..1 + rng.below(16)).map(|_| rng.next() as u8));
            continue;
        }
        let len = buf.len();
        match rng.below(10) {
            0 | 1 => {
                let at = position(rng, len);
                buf[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = position(rng, len);
                buf[at] = [0, 0xff, 0x80, rng.next() as u8][rng.below(4)];
            }
            3 => {
                let at = position(rng, len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                buf.splice(at..at, bytes);
            }
            4 => {
                let at = position(rng, len);
                let n = (1 + rng.below(16)).min(len - at);
                buf.drain(at..at + n);
            }
            5 => buf.truncate(position(rng, len)),
            6 => {
                // Cross-over: a prefix of this input, a suffix of another.
                let cut = position(rng, len);
                let from = rng.below(other.len() + 1);
                buf.truncate(cut);
                buf.extend_from_slice(&other[from..]);
            }
            _ => {
                // An extreme (or a neighbour of one) written as a u16, u32 or u64, at a
                // 4-byte boundary most of the time (where these formats put their fields).
                let mut v = EXTREMES[rng.below(EXTREMES.len())];
                v = match rng.below(4) {
                    0 => v.wrapping_add(1),
                    1 => v.wrapping_sub(1),
                    _ => v,
                };
                let width = [2, 4, 4, 8][rng.below(4)];
                let mut at = position(rng, len);
                if rng.below(4) != 0 {
                    at &= !3;
                }
                let end = (at + width).min(len);
                buf[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
    buf
}

thread_local! {
    /// The last panic's message and location, recorded by the panic hook.
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    /// Whether this thread is inside a target call: only those panics are recorded
    /// quietly; others (a test's own assertion) go to the default hook and are printed.
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(Cell::get) {
                return default(info);
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg} at {at}"));
        }));
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `fuzz/corpus/<name>/` and the named repository files, sorted by name.
fn seeds(name: &str, repo_files: &[&str]) -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("fuzz/corpus").join(name);
    // A target whose seeds are all repository files or built by the test (ONNX) has no
    // corpus folder: git keeps no empty folders.
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        r => r.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).collect(),
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .into_iter()
        .map(|e| {
            let path = e.expect("corpus directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.file_name().expect("a file name").to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    for f in repo_files {
        let path = repo().join(f);
        out.push((f.to_string(), std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))));
    }
    out
}

/// Replays every seed, then mutates for the time budget; fails on any panic.
fn run(name: &str, target: Target, seeds: Vec<(String, Vec<u8>)>) {
    install_hook();
    let budget = Duration::from_secs_f64(env_u64("ARQ_FUZZ_SECONDS", 8) as f64);
    let seed = env_u64("ARQ_FUZZ_SEED", 0x5eed_f022_a2c0_0001);
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut call = |input: &[u8], what: String, failures: &mut Vec<String>| {
        IN_TARGET.with(|t| t.set(true));
        let result = panic::catch_unwind(AssertUnwindSafe(|| target(input)));
        IN_TARGET.with(|t| t.set(false));
        match result {
            Ok(outcome) => *outcomes.entry(outcome).or_default() += 1,
            Err(_) => {
                let message = LAST_PANIC.with(|p| p.take());
                let file = tmp.join(format!("fuzz-crash-{name}-{}", failures.len()));
                let saved = match std::fs::write(&file, input) {
                    Ok(()) => file.display().to_string(),
                    Err(e) => format!("(not saved: {e})"),
                };
                failures.push(format!("{what}: {message}; input in {saved}"));
            }
        }
    };
    let start = Instant::now();
    for (file, bytes) in &seeds {
        call(bytes, format!("seed file {file}"), &mut failures);
    }
    let mut case = 0u64;
    // Stop after a few crashes: each is saved, and more of the same tell nothing new.
    while start.elapsed() < budget && failures.len() < 8 {
        // Each case is its own stream, so that one can be replayed alone.
        let mut rng = Rng((seed ^ case).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        let mut input = mutate(&mut rng, a, b);
        // Sometimes mutate the mutant again, to reach past a first check.
        if rng.below(4) == 0 {
            input = mutate(&mut rng, &input, b);
        }
        call(&input, format!("seed {seed:#x} case {case}"), &mut failures);
        case += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    arq_fuzz::remove_scratch();
    let total = seeds.len() as u64 + case;
    let shown: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "fuzz {name}: {total} inputs ({} seeds, {case} mutants) in {secs:.1} s, {:.0}/s; {} distinct outcomes ({}); {} panicked",
        seeds.len(),
        total as f64 / secs,
        outcomes.len(),
        shown.join(", "),
        failures.len()
    );
    assert!(failures.is_empty(), "fuzz {name}: {} inputs panicked:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn fuzz_arq_file() {
    let repo_files = ["models/pixelcnn/digits-binary-q8.arq", "models/tinygpt/tinygpt-q8.arq"];
    run("arq_file", arq_fuzz::arq_file, seeds("arq_file", &repo_files));
}

#[test]
fn fuzz_gguf() {
    run("gguf", arq_fuzz::gguf, seeds("gguf", &[]));
}

#[test]
fn fuzz_onnx() {
    let repo_files =
        ["models/pixelcnn/digits-binary.onnx", "models/tinygpt/tinygpt.onnx", "models/pixelcnn/pg-pixelcnn.onnx"];
    let mut all = seeds("onnx", &repo_files);
    all.extend(small_onnx());
    run("onnx", arq_fuzz::onnx, all);
}

#[test]
fn fuzz_tokenizer() {
    run("tokenizer", arq_fuzz::tokenizer, seeds("tokenizer", &[]));
}

#[test]
fn fuzz_tokenizer_blob() {
    run("tokenizer_blob", arq_fuzz::tokenizer_blob, small_tokenizer_blobs());
}

/// A small byte-level BPE blob (version 1) and a small SentencePiece blob (version 2),
/// built here with the runtime's builders.
fn small_tokenizer_blobs() -> Vec<(String, Vec<u8>)> {
    use arq::tokenizer::{build_blob_with, build_spm_blob, PreTokenizer, SpmOptions};
    let mut tokens: Vec<String> = vec!["<|im_end|>".into()];
    tokens.extend(('!'..='~').map(String::from));
    tokens.extend(["he", "ll", "hell", "hello"].map(String::from));
    let mut types = vec![3];
    types.resize(tokens.len(), 1);
    let merges = ["h e", "l l", "he ll", "hell o"];
    let bpe = build_blob_with(PreTokenizer::Llama3, &tokens, &types, &merges).expect("small BPE blob");
    let mut pieces: Vec<String> = ["<unk>", "<start_of_turn>", "\n", "  "].map(String::from).to_vec();
    let mut piece_types = vec![2, 3, 4, 4];
    for b in [0x41u8, 0xe4, 0xb8, 0xad, 0xf0, 0x9f] {
        pieces.push(format!("<0x{b:02X}>"));
        piece_types.push(6);
    }
    for p in ["▁", "a", "b", "ab", "▁a", "中", "文"] {
        pieces.push(p.into());
        piece_types.push(1);
    }
    let opts = SpmOptions { add_space_prefix: true, unk: Some(0), gemma: true };
    let spm = build_spm_blob(&pieces, &piece_types, &[], opts).expect("small SentencePiece blob");
    vec![("built:bpe-llama3".into(), bpe), ("built:spm-gemma".into(), spm)]
}

#[test]
fn fuzz_npy() {
    run("npy", arq_fuzz::npy, seeds("npy", &[]));
}

#[test]
fn fuzz_png() {
    run("png", arq_fuzz::png, seeds("png", &[]));
}

/// Small ONNX models that reach the importers' graph walks quickly (the committed models
/// are 0.6 to 1 MB, so each of their mutants costs a full decode): the first nodes of
/// each committed model with their initializers dropped, under each architecture's
/// metadata.
fn small_onnx() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (f, keep) in [("models/pixelcnn/digits-binary.onnx", 6), ("models/tinygpt/tinygpt.onnx", 12)] {
        let bytes = std::fs::read(repo().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{f}: {e}"));
        let graph = proto.graph.as_mut().expect("a committed model has a graph");
        graph.node.truncate(keep);
        // Keep only the small initializers (biases, shapes): the large ones are weights.
        graph.initializer.retain(|t| t.raw_data.len() + 4 * t.float_data.len() <= 1024);
        out.push((format!("{f} (first {keep} nodes, small initializers)"), proto.encode_to_vec()));
    }
    out
}
