//! Fuzz targets over arq's readers: each takes arbitrary bytes, runs them through the
//! real library code paths (the same entry points the CLI uses), and must never panic.
//! An `Err` is the expected outcome for most inputs; each target returns a short label
//! of how far the input got, so that a driver can count distinct outcomes.
//!
//! The bounded driver is `tests/bounded.rs` (run by the test command); see README.md
//! for longer runs.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arq::aligned::AlignedBytes;
use arq::format::ArqFile;
use arq::tokenizer::{Tokenizer, Utf8Stream};
use arq::{
    GraphSession, GraphSessionConfig, KvDtype, Model, PixelCnn, PixelGraph, PixelSession, PixelSessionConfig, Session,
    SessionConfig,
};
use arq_convert::import::gguf::text::read_gguf;
use arq_convert::import::gguf::GgufFile;
use arq_convert::import::onnx::{Gpt2Source, GraphSource, PixelCnnSource};

/// Arenas above this are skipped: a mutated configuration may ask for any size, and an
/// allocation failure aborts instead of panicking (the loaders' own size caps are
/// tested elsewhere; here the question is panics).
const MAX_ARENA: usize = 64 << 20;

/// Tensors with more elements than this are not dequantized: the reader has already
/// checked that their bytes lie inside the input, so a large one is merely slow.
const MAX_DEQUANT_ELEMENTS: u64 = 1 << 20;

/// `.arq`: parse, every tensor view, the metadata, then the loader of its kind and,
/// when it loads, one step (transformer: step and a prefill; PixelCNN: a pixel).
pub fn arq_file(data: &[u8]) -> &'static str {
    // The reader needs a 64-byte aligned base, as a mapped file has.
    let owned = AlignedBytes::copy_of(data);
    let bytes = owned.bytes();
    let Ok(file) = ArqFile::parse(bytes) else {
        return "parse error";
    };
    for t in file.tensors() {
        let _ = (t.as_f32(), t.as_q8(), t.as_q4(), t.shape.n_elements());
    }
    let _ = file.meta_iter().count();
    // Either loader may accept a file; try both so that a file of one kind mutated
    // towards the other is still exercised.
    let transformer = match Model::load(bytes) {
        Ok(model) => transformer_step(&model),
        Err(_) => "transformer refused",
    };
    let pixel = match PixelCnn::load(bytes) {
        Ok(model) => pixel_step(&model),
        Err(_) => "pixelcnn refused",
    };
    let graph = match PixelGraph::load(bytes) {
        Ok(model) => graph_step(&model),
        Err(_) => "pixelgraph refused",
    };
    match (transformer, pixel, graph) {
        ("transformer refused", "pixelcnn refused", "pixelgraph refused") => "loaders refused",
        ("transformer refused", "pixelcnn refused", g) => g,
        ("transformer refused", p, _) => p,
        (t, _, _) => t,
    }
}

fn graph_step(model: &PixelGraph<'_>) -> &'static str {
    let cfg = GraphSessionConfig::full(1);
    let Ok(need) = model.memory_plan(&cfg) else {
        return "pixelgraph loaded, no plan";
    };
    if need > MAX_ARENA {
        return "pixelgraph loaded, arena over cap";
    }
    let mut arena = vec![0u8; need];
    let Ok(mut s) = GraphSession::new(model, &mut arena, cfg) else {
        return "pixelgraph loaded, session refused";
    };
    let _ = s.params();
    let _ = s.log_probs();
    let _ = s.push_level(0);
    let _ = s.params();
    let _ = s.forward_full(&vec![0u8; model.config().pixels()]);
    "pixelgraph stepped"
}

fn transformer_step(model: &Model<'_>) -> &'static str {
    if let Ok(tok) = model.tokenizer() {
        exercise_tokenizer(&tok, b"Hello, world! 123 <|im_end|>\n\xff\xfe");
    }
    let cfg = SessionConfig { ctx: 8, batch: 2, threads: 1, kv: KvDtype::Q8, seqs: 1 };
    let Ok(need) = model.memory_plan(&cfg) else {
        return "transformer loaded, no plan";
    };
    if need > MAX_ARENA {
        return "transformer loaded, arena over cap";
    }
    let mut arena = vec![0u8; need];
    let Ok(mut s) = Session::new(model, &mut arena, cfg) else {
        return "transformer loaded, session refused";
    };
    let vocab = (model.config().vocab as u32).max(1);
    let _ = s.step(1 % vocab);
    let _ = s.prefill(&[0, 2 % vocab, 3 % vocab]);
    "transformer stepped"
}

fn pixel_step(model: &PixelCnn<'_>) -> &'static str {
    let cfg = PixelSessionConfig { full_forward: false };
    let Ok(need) = model.memory_plan(&cfg) else {
        return "pixelcnn loaded, no plan";
    };
    if need > MAX_ARENA {
        return "pixelcnn loaded, arena over cap";
    }
    let mut arena = vec![0u8; need];
    let Ok(mut s) = PixelSession::new(model, &mut arena, cfg) else {
        return "pixelcnn loaded, session refused";
    };
    let _ = s.params();
    let _ = s.log_probs();
    let _ = s.push_level(0);
    let _ = s.params();
    "pixelcnn stepped"
}

/// GGUF: the reader from bytes, every tensor's data range and (when small) its
/// dequantization, then the LLaMA importer's whole read (header checks, tokenizer,
/// tensors) when the reader accepted the input.
pub fn gguf(data: &[u8]) -> &'static str {
    let Ok(g) = GgufFile::from_bytes(data.to_vec()) else {
        return "reader refused";
    };
    let _ = (g.architecture(), g.alignment(), g.data_offset());
    for t in &g.tensors {
        let _ = (t.n_elements(), t.shape_rows_cols(), t.n_bytes(), t.ty.describe());
        if g.tensor_data(t).is_ok() && t.n_elements() <= MAX_DEQUANT_ELEMENTS {
            let _ = g.dequantize(t);
        }
    }
    // The importer reads a path only (it maps the file).
    let read = with_temp_file("gguf", data, |path| read_gguf(path, false).is_ok());
    if read {
        "llama read"
    } else {
        "reader ok, llama refused"
    }
}

/// ONNX: the protobuf decode, then both graph-pattern importers. GPT-2's takes a
/// decoded proto; the PixelCNN's only a path, so the input is written to a temporary
/// file for it (only when it decodes, so most inputs cost no file).
pub fn onnx(data: &[u8]) -> &'static str {
    let Ok(proto) = <tract_onnx::pb::ModelProto as prost::Message>::decode(data) else {
        return "protobuf refused";
    };
    // The importers' entry (`read_proto`) refuses these before an importer sees them,
    // and the importers rely on it (a graph with nodes, an IR version).
    match &proto.graph {
        Some(g) if proto.ir_version > 0 && !g.node.is_empty() => {}
        _ => return "decoded, no graph",
    }
    let path = Path::new("fuzz.onnx");
    let gpt2 = Gpt2Source::from_proto(path, &proto).is_ok();
    let pixel = with_temp_file("onnx", data, |path| PixelCnnSource::from_onnx(path, None).is_ok());
    let graph = with_temp_file("onnx", data, |path| GraphSource::from_onnx(path, None).is_ok());
    match (gpt2, pixel, graph) {
        (true, _, _) => "gpt2 imported",
        (_, true, _) => "pixelcnn imported",
        (_, _, true) => "pixel graph imported",
        _ => "importers refused",
    }
}

/// The tokenizer of the committed tinygpt model (a character vocabulary): encode of the
/// input as text (lossy UTF-8), decode and streaming decode of ids read from the input
/// (little-endian u16s, so that out-of-range ids occur).
pub fn tokenizer(data: &[u8]) -> &'static str {
    static MODEL: OnceLock<AlignedBytes> = OnceLock::new();
    let bytes = MODEL.get_or_init(|| AlignedBytes::copy_of(include_bytes!("../../models/tinygpt/tinygpt-q8.arq")));
    // The committed model is checked by the runtime's tests; a failure here is a broken
    // checkout, not a finding.
    let model = Model::load(bytes.bytes()).expect("models/tinygpt/tinygpt-q8.arq loads");
    let tok = model.tokenizer().expect("tinygpt has a tokenizer");
    exercise_tokenizer(&tok, data)
}

/// A tokenizer blob (`Tokenizer::from_blob`, byte-level BPE or SentencePiece): when one
/// loads, encode and decode of fixed texts and of ids read from the input.
pub fn tokenizer_blob(data: &[u8]) -> &'static str {
    let Ok(tok) = Tokenizer::from_blob(data) else {
        return "refused";
    };
    for text in
        [&b"Hello, world! 123 <|im_end|>\n\xff\xfe"[..], "  a\u{2581}b\t\t\n\n中文 😀 <start_of_turn>".as_bytes()]
    {
        exercise_tokenizer(&tok, text);
        let mut scratch = [0u32; 256];
        let _ = tok.encode_with_scratch(&String::from_utf8_lossy(text), true, &mut scratch, |_| {});
    }
    exercise_tokenizer(&tok, data.get(..data.len().min(64)).unwrap_or_default());
    "loaded"
}

fn exercise_tokenizer(tok: &Tokenizer<'_>, data: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(data);
    let special = data.first().is_some_and(|b| b & 1 == 1);
    let ids = tok.encode(&text, special);
    let round = tok.decode(&ids);
    let _ = tok.decode_skip_control(&ids);
    // Arbitrary ids, in range or not.
    let raw: Vec<u32> = data.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).collect();
    let _ = tok.decode(&raw);
    let mut stream = Utf8Stream::new();
    let mut streamed = String::new();
    for &id in raw.iter().chain(&[u32::MAX, tok.vocab_size()]) {
        if let Some(piece) = tok.token_bytes(id) {
            stream.push(piece, |s| streamed.push_str(s));
        }
        let _ = (tok.token_type(id), tok.is_control(id));
    }
    stream.flush(|s| streamed.push_str(s));
    if round == text {
        "round trip"
    } else {
        "lossy"
    }
}

/// `.npy`: the converter's reader (it takes a path: the input goes to a temporary file).
pub fn npy(data: &[u8]) -> &'static str {
    match with_temp_file("npy", data, |path| arq_convert::images::read_npy_u8(path).map(|i| i.n)) {
        Ok(_) => "read",
        Err(_) => "refused",
    }
}

/// PNG: the converter's grey reader (it takes a path: the input goes to a temporary file).
pub fn png(data: &[u8]) -> &'static str {
    match with_temp_file("png", data, |path| arq_convert::images::read_png_gray(path).map(|(h, _, _)| h)) {
        Ok(_) => "read",
        Err(_) => "refused",
    }
}

thread_local! {
    /// One scratch file per thread and kind, reused for every input.
    static TEMP_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Removes this thread's scratch directory (a driver calls it when it is done).
pub fn remove_scratch() {
    if let Some(dir) = TEMP_DIR.with(|d| d.borrow_mut().take()) {
        // Best effort: a leftover directory in the temp dir is harmless.
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes `data` to this thread's scratch file for `ext` and calls `f` on its path.
/// A failure to write is an environment problem, not a finding, so it panics with a
/// message that says so.
fn with_temp_file<T>(ext: &str, data: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    let dir = TEMP_DIR.with(|d| {
        d.borrow_mut()
            .get_or_insert_with(|| {
                let dir = std::env::temp_dir().join(format!(
                    "arq-fuzz-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
                dir
            })
            .clone()
    });
    let path = dir.join(format!("input.{ext}"));
    std::fs::write(&path, data).expect("cannot write the fuzz scratch file");
    f(&path)
}
