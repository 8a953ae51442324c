//! An in-process mutation loop over the committed models: each mutated file is parsed,
//! loaded, and, when it loads, run for a step (and its tokenizer used). Any panic fails
//! the test with the case that caused it; an error is the expected outcome.
//!
//! Run it in the overflow-checked profile so that wrapping arithmetic shows up as a
//! panic: `cargo test --profile checked -p arq --test mutated_models`. `ARQ_MUTATIONS`
//! (cases per model, default 5,000) and `ARQ_MUTATION_SEED` make longer or other runs;
//! a failure names its seed and case, and each case draws from its own stream, so the
//! same seed replays it.

use arq::format::ArqFile;
use arq::{KvDtype, Model, PixelCnn, PixelSession, PixelSessionConfig, Rnn, RnnSession, Session, SessionConfig};
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

/// Arenas above this are skipped: a mutated configuration may ask for any size, and
/// an allocation failure aborts instead of panicking (sizes are bounded in issue 12's
/// part 3, not here).
const MAX_ARENA: usize = 64 << 20;

/// Which loader a committed file is for.
#[derive(Clone, Copy)]
enum Family {
    Transformer,
    Pixel,
    Recurrent,
}

/// The committed files: (name, bytes, family).
const MODELS: [(&str, &[u8], Family); 6] = [
    ("pixelcnn/digits17-q8.arq", include_bytes!("../../models/pixelcnn/digits17-q8.arq"), Family::Pixel),
    ("pixelcnn/digits-dlm-q8.arq", include_bytes!("../../models/pixelcnn/digits-dlm-q8.arq"), Family::Pixel),
    ("pixelcnn/digits-binary-q8.arq", include_bytes!("../../models/pixelcnn/digits-binary-q8.arq"), Family::Pixel),
    ("tinygpt/tinygpt-q8.arq", include_bytes!("../../models/tinygpt/tinygpt-q8.arq"), Family::Transformer),
    ("rnn/char-lstm-q8.arq", include_bytes!("../../models/rnn/char-lstm-q8.arq"), Family::Recurrent),
    ("series/sunspots-q8.arq", include_bytes!("../../models/series/sunspots-q8.arq"), Family::Recurrent),
];

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

/// A 64-byte aligned, growable copy of a file (the reader needs an aligned base).
struct Aligned {
    words: Vec<u64>,
    skip: usize,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Aligned {
        let words = vec![0u64; bytes.len() / 8 + 16];
        let skip = (words.as_ptr() as *const u8).align_offset(64);
        let mut a = Aligned { words, skip, len: bytes.len() };
        a.bytes_mut().copy_from_slice(bytes);
        a
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[self.skip..self.skip + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[self.skip..self.skip + self.len]
    }
}

/// Byte ranges of a file worth aiming at: the header, the metadata values, the
/// tensor directory and the tokenizer blob's header (mutations elsewhere are mostly
/// weight bytes, which change numbers, not structure).
struct Targets {
    /// (offset, width) of the fixed-size integer fields of the header, the metadata, the
    /// directory and the tokenizer blob: each group is drawn as often (the directory has
    /// most of the fields, the metadata most of the configuration).
    groups: [Vec<(usize, usize)>; 4],
    structure_end: usize,
}

fn targets(bytes: &[u8]) -> Targets {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let header = [(8, 4), (12, 4), (16, 4), (24, 8), (32, 8), (40, 8), (48, 8), (56, 8), (64, 8)].into();
    let (mut meta, mut dir, mut tokenizer) = (Vec::new(), Vec::new(), Vec::new());
    let (meta_off, meta_len, dir_off) = (u64_at(24), u64_at(32), u64_at(40));
    // Metadata entries: u16 key length, key, u8 type, value (u32 length first for strings).
    let mut at = meta_off;
    while at < meta_off + meta_len {
        let klen = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        meta.push((at, 2));
        let ty = bytes[at + 2 + klen];
        let v = at + 3 + klen;
        let width = match ty {
            0..=2 => 4,
            3 => 8,
            4 => 1,
            _ => 4,
        };
        meta.push((v, width));
        at = v + width;
        if ty == 5 {
            at += u32::from_le_bytes(bytes[v..v + 4].try_into().unwrap()) as usize;
        }
    }
    let file = ArqFile::parse(bytes).expect("the committed model parses");
    for i in 0..file.n_tensors() {
        let e = dir_off + 128 * i;
        dir.extend([(e + 64, 4), (e + 68, 4)]);
        dir.extend((0..6).map(|d| (e + 72 + 8 * d, 8)));
    }
    if let Some((_, t)) = file.find("tokenizer") {
        let blob = t.data.as_ptr() as usize - bytes.as_ptr() as usize;
        tokenizer.extend((0..8).map(|w| (blob + 4 * w, 4)));
        // A few words of its tables: byte tokens, offsets, sorted ids.
        tokenizer.extend((8..400).step_by(7).map(|w| (blob + 4 * w, 4)));
    }
    let groups = [header, meta, dir, tokenizer].map(|g| if g.is_empty() { vec![(8, 4)] } else { g });
    Targets { groups, structure_end: u64_at(48) }
}

const EXTREMES: [u64; 16] = [
    0,
    1,
    2,
    31,
    32,
    63,
    64,
    128,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 63,
    u64::MAX - 63,
    u64::MAX,
];

/// Applies one to four mutations; returns the mutated length (after a truncation).
fn mutate(rng: &mut Rng, buf: &mut [u8], t: &Targets) -> usize {
    let mut len = buf.len();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 => {
                let at = rng.below(len);
                buf[at] ^= 1 << rng.below(8);
            }
            1 => {
                // A byte of the structure (header, metadata, directory) set.
                let at = rng.below(t.structure_end.min(len));
                buf[at] = [0, 0xff, rng.next() as u8][rng.below(3)];
            }
            2 => {
                let at = rng.below(len);
                buf[at] = [0, 0xff, rng.next() as u8][rng.below(3)];
            }
            3 => len = if rng.below(2) == 0 { rng.below(t.structure_end + 64) } else { rng.below(len) }.min(len),
            _ => {
                // An extreme value, or a near one, spliced into a field.
                let group = &t.groups[rng.below(t.groups.len())];
                let (at, width) = group[rng.below(group.len())];
                let mut v = EXTREMES[rng.below(EXTREMES.len())];
                v = match rng.below(4) {
                    0 => v.wrapping_add(1),
                    1 => v.wrapping_sub(1),
                    _ => v,
                };
                if at + width <= len {
                    buf[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
        }
    }
    len
}

/// How far a mutated file got.
#[derive(Clone, Copy)]
enum Reached {
    ParseError,
    Parsed,
    Loaded,
    Stepped,
}

/// Everything a user of a loaded file may call once: no call may panic.
fn exercise(bytes: &[u8], family: Family) -> Reached {
    let Ok(file) = ArqFile::parse(bytes) else {
        return Reached::ParseError;
    };
    for t in file.tensors() {
        let _ = (t.as_f32(), t.as_q8(), t.as_q4(), t.shape.n_elements());
    }
    let _ = file.meta_iter().count();
    if let Family::Recurrent = family {
        let Ok(model) = Rnn::load(bytes) else {
            return Reached::Parsed;
        };
        if let Ok(tok) = model.tokenizer() {
            let ids = tok.encode("To be, or not to be\n", false);
            let _ = (tok.decode(&ids), tok.first_unknown("snow ☃"));
        }
        let Ok(need) = model.memory_plan() else {
            return Reached::Loaded;
        };
        if need > MAX_ARENA {
            return Reached::Loaded;
        }
        let mut arena = vec![0u8; need];
        let Ok(mut s) = RnnSession::new(&model, &mut arena) else {
            return Reached::Loaded;
        };
        let _ = s.step(1);
        let _ = s.step(2);
        let _ = s.start_value();
        let _ = s.step_value(3.5);
        if let (Some(head), Ok(p)) = (model.head(), s.step_value(1.0)) {
            let _ = head.log_density(p, 0.5);
        }
        return Reached::Stepped;
    }
    if let Family::Transformer = family {
        let Ok(model) = Model::load(bytes) else {
            return Reached::Parsed;
        };
        if let Ok(tok) = model.tokenizer() {
            let mut scratch = [0u32; 18 * 64];
            let _ = tok.encode_with_scratch("Hello, world! 123 <|im_end|>\n", true, &mut scratch, |id| {
                let _ = tok.token_bytes(id);
            });
        }
        let cfg = SessionConfig { ctx: 8, batch: 2, threads: 1, kv: KvDtype::Q8, seqs: 1 };
        let Ok(need) = model.memory_plan(&cfg) else {
            return Reached::Loaded;
        };
        if need > MAX_ARENA {
            return Reached::Loaded;
        }
        let mut arena = vec![0u8; need];
        let Ok(mut s) = Session::new(&model, &mut arena, cfg) else {
            return Reached::Loaded;
        };
        let vocab = model.config().vocab as u32;
        let _ = s.step(1 % vocab.max(1));
        let _ = s.prefill(&[0, 2 % vocab.max(1), 3 % vocab.max(1)]);
    } else {
        let Ok(model) = PixelCnn::load(bytes) else {
            return Reached::Parsed;
        };
        let cfg = PixelSessionConfig { full_forward: false };
        let Ok(need) = model.memory_plan(&cfg) else {
            return Reached::Loaded;
        };
        if need > MAX_ARENA {
            return Reached::Loaded;
        }
        let mut arena = vec![0u8; need];
        let Ok(mut s) = PixelSession::new(&model, &mut arena, cfg) else {
            return Reached::Loaded;
        };
        let _ = s.params();
        let _ = s.log_probs();
        let _ = s.push_level(0);
        let _ = s.params();
    }
    Reached::Stepped
}

thread_local! {
    /// The last panic's message and location, recorded by the test's panic hook.
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn mutated_models_give_errors_never_panics() {
    let cases = env_u64("ARQ_MUTATIONS", 5_000);
    let seed = env_u64("ARQ_MUTATION_SEED", 0x5eed_a2c0_ffee_0001);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg} at {at}"));
    }));
    let mut failures = Vec::new();
    let mut reached = [0usize; 4];
    for (m, &(name, original, family)) in MODELS.iter().enumerate() {
        let t = targets(Aligned::new(original).bytes());
        let mut buf = Aligned::new(original);
        for case in 0..cases {
            // Each case is its own stream, so that one can be replayed alone.
            let mut rng = Rng((seed ^ ((m as u64) << 56) ^ case).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            buf.len = original.len();
            buf.bytes_mut().copy_from_slice(original);
            buf.len = mutate(&mut rng, buf.bytes_mut(), &t);
            match panic::catch_unwind(AssertUnwindSafe(|| exercise(buf.bytes(), family))) {
                Ok(r) => reached[r as usize] += 1,
                Err(_) => {
                    let what = LAST_PANIC.with(|p| p.take());
                    failures.push(format!("{name} seed {seed:#x} case {case}: {what}"));
                }
            }
        }
    }
    panic::set_hook(previous);
    let total = reached.iter().sum::<usize>() + failures.len();
    let [refused, parsed, loaded, stepped] = reached;
    println!(
        "{total} mutated files: {refused} refused by the parser, {parsed} by the loaders, {loaded} by the \
         session, {stepped} stepped, {} panicked",
        failures.len()
    );
    assert!(failures.is_empty(), "{} of {total} mutated files panicked:\n{}", failures.len(), failures.join("\n"));
}
