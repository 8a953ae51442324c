//! `arq inspect`: a model's hyperparameters, tokenizer, arena size and tensors, as text
//! or JSON, for either kind of model.

use arq::format::keys;
use std::path::Path;

use anyhow::Result;
use arq::format::{ArqFile, MetaValue, TensorView};
use arq::models::transformer::family::Positions;
use arq::tokenizer::{Tokenizer, TokenizerKind};
use arq::{GraphSessionConfig, Model, PixelCnn, PixelGraph, PixelSessionConfig, SessionConfig};
use arq_convert::model::{Loaded, ModelFile};
use arq_convert::text::tokenizer;
use serde_json::json;

pub fn run(path: &Path, ctx: usize, verify: bool, json_out: bool) -> Result<()> {
    let file = ModelFile::open(path)?;
    let parsed = file.parse()?;
    if verify {
        parsed.verify_checksum().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    match file.load_parsed(parsed)? {
        Loaded::Pixel(model) => pixel(&model, path, file.bytes().len(), verify, json_out),
        Loaded::Graph(model) => graph(&model, path, file.bytes().len(), verify, json_out),
        Loaded::Text(model) => text(&model, path, file.bytes().len(), (ctx, verify), json_out),
        Loaded::Recurrent(model) => super::rnn::inspect(&model, path, file.bytes().len(), json_out),
    }
}

/// What `inspect` reports on a text model beyond its config.
struct TextFacts<'a> {
    tok: Tokenizer<'a>,
    /// The arena for `ctx` tokens in batches of `batch`, and its KV cache.
    arena: usize,
    kv: usize,
    /// The KV cache if no layer had a sliding window.
    kv_full: usize,
    batch: usize,
    /// The tokenizer's kind, in words.
    kind: String,
    /// The byte-level BPE pre-tokenizer's name (empty for SentencePiece).
    pre: String,
}

impl<'a> TextFacts<'a> {
    fn of(model: &Model<'a>, ctx: usize) -> Result<Self> {
        let tok = tokenizer(model)?;
        let plan_cfg = SessionConfig { ctx, batch: 32, threads: 1, ..Default::default() };
        let arena = model.memory_plan(&plan_cfg)?;
        let kv = model.kv_cache_bytes(&plan_cfg, true)?;
        let kv_full = model.kv_cache_bytes(&plan_cfg, false)?;
        // GPT-2 files carry the pre-tokenizer only in the tokenizer tables.
        let (kind, pre) = match (tok.kind(), meta_str(model.file(), "tokenizer.pre")) {
            (TokenizerKind::SentencePiece { .. }, _) => {
                ("SentencePiece pieces with byte fallback".into(), String::new())
            }
            (_, p) if !p.is_empty() => (format!("byte-level BPE ({p})"), p),
            (TokenizerKind::ByteLevelBpe(pre), _) => (format!("byte-level BPE ({})", pre.name()), pre.name().into()),
            // The word_language_model transformer's vocabulary (`--vocab`).
            (TokenizerKind::Words, _) => ("words (<eos> at line ends)".into(), String::new()),
            (TokenizerKind::Chars, _) => ("characters".into(), String::new()),
            _ => ("?".into(), "?".into()),
        };
        Ok(TextFacts { tok, arena, kv, kv_full, batch: plan_cfg.batch, kind, pre })
    }
}

/// The tokenizer model's name as `tokenizer.model` spells it.
fn tok_kind_name(tok: &Tokenizer<'_>) -> &'static str {
    match tok.kind() {
        TokenizerKind::SentencePiece { .. } => "llama",
        TokenizerKind::Words => "words",
        TokenizerKind::Chars => "chars",
        _ => "gpt2",
    }
}

fn meta_str(file: &ArqFile<'_>, k: &str) -> String {
    file.meta(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
}

fn meta_id(file: &ArqFile<'_>, k: &str) -> Option<u64> {
    file.meta(k).and_then(|v| v.as_u64())
}

fn text(model: &Model<'_>, path: &Path, file_bytes: usize, (ctx, verify): (usize, bool), json_out: bool) -> Result<()> {
    let facts = TextFacts::of(model, ctx)?;
    if json_out {
        println!("{}", text_json(model, file_bytes, &facts, (ctx, verify)));
        return Ok(());
    }
    let c = *model.config();
    let file = model.file();
    let tok = &facts.tok;
    println!("{}: {} bytes, {}, {} weights", path.display(), file_bytes, c.family.name(), meta_str(file, keys::QUANT));
    println!("  name           {}", meta_str(file, keys::GENERAL_NAME));
    println!(
        "  dims           vocab {} | dim {} | layers {} | heads {} (kv {}) x {} | ffn {}",
        c.vocab, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim
    );
    match c.family.spec().positions {
        Positions::Rotary => println!(
            "  rope base {} | rms eps {:e} | trained context {} | tied embeddings {}",
            c.rope_base,
            c.norm_eps,
            c.ctx_train,
            model.tied_embeddings()
        ),
        Positions::Learned => println!(
            "  learned positions {} | layer norm eps {:e} | tied embeddings {}",
            c.ctx_train,
            c.norm_eps,
            model.tied_embeddings()
        ),
    }
    if c.sliding_window > 0 {
        let sliding = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        println!(
            "  sliding window {} tokens in {sliding} of {} layers (rope base {}); their KV cache holds the window",
            c.sliding_window, c.n_layers, c.rope_base_local
        );
    }
    println!(
        "  tokenizer      {}, {} tokens, bos {:?}, eos {:?}, chat template: {}",
        facts.kind,
        tok.vocab_size(),
        meta_id(file, "tokenizer.bos_id"),
        meta_id(file, "tokenizer.eos_id"),
        if meta_str(file, "tokenizer.chat_template").is_empty() { "no" } else { "yes" }
    );
    println!("  arena          {} bytes for ctx {ctx} (KV cache {}, batch {})", facts.arena, facts.kv, facts.batch);
    if facts.kv != facts.kv_full {
        println!(
            "  sliding window saves {} bytes of KV cache ({} without it)",
            facts.kv_full - facts.kv,
            facts.kv_full
        );
    }
    if verify {
        println!("  checksum       ok");
    }
    let tensors: Vec<_> = file.tensors().collect();
    println!("  tensors        {}", tensors.len());
    print_tensors(&tensors);
    Ok(())
}

/// `inspect --json` of a text model.
fn text_json(
    model: &Model<'_>,
    file_bytes: usize,
    f: &TextFacts<'_>,
    (ctx, verify): (usize, bool),
) -> serde_json::Value {
    let c = *model.config();
    let file = model.file();
    let meta: serde_json::Map<String, serde_json::Value> = file
        .meta_iter()
        .map(|(k, v)| {
            let j = match v {
                MetaValue::U32(x) => json!(x),
                MetaValue::I32(x) => json!(x),
                MetaValue::F32(x) => json!(x),
                MetaValue::U64(x) => json!(x),
                MetaValue::Bool(x) => json!(x),
                MetaValue::Str(x) => json!(x),
            };
            (k.to_string(), j)
        })
        .collect();
    let tensors: Vec<_> = file.tensors().collect();
    json!({
        "file_bytes": file_bytes,
        "architecture": c.family.name(),
        "quant": meta_str(file, keys::QUANT),
        "hyperparameters": {
            "vocab": c.vocab, "dim": c.dim, "layers": c.n_layers, "heads": c.n_heads,
            "kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "ffn_dim": c.ffn_dim,
            "rope_base": c.rope_base, "norm_eps": c.norm_eps, "context_length": c.ctx_train,
            "tied_embeddings": model.tied_embeddings(),
        },
        "tokenizer": {"vocab": f.tok.vocab_size(), "bos_id": meta_id(file, "tokenizer.bos_id"), "eos_id": meta_id(file, "tokenizer.eos_id"),
                      "kind": tok_kind_name(&f.tok), "pre": f.pre, "chat_template": !meta_str(file, "tokenizer.chat_template").is_empty()},
        "arena": {"ctx": ctx, "batch": f.batch, "bytes": f.arena, "kv_cache_bytes": f.kv, "kv_cache_bytes_unwindowed": f.kv_full},
        "checksum_verified": verify,
        "metadata": meta,
        "tensors": tensors_json(&tensors),
    })
}

/// `inspect --json`'s tensor list.
fn tensors_json(tensors: &[TensorView<'_>]) -> Vec<serde_json::Value> {
    tensors
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape.dims(), "bytes": t.data.len()}))
        .collect()
}

/// `inspect`'s tensor table.
fn print_tensors(tensors: &[TensorView<'_>]) {
    for t in tensors {
        let shape = format!("{:?}", t.shape.dims());
        println!("    {:<24} {:<4} {:<16} {:>10} bytes", t.name, t.dtype.name(), shape, t.data.len());
    }
}

fn pixel(model: &PixelCnn<'_>, path: &Path, file_bytes: usize, verify: bool, json_out: bool) -> Result<()> {
    let c = model.config();
    let f = model.file();
    let arena = model.memory_plan(&PixelSessionConfig::default())?;
    let layers: Vec<_> = (0..c.n_layers).map(|l| json!({"kernel": c.kernel[l], "dilation": c.dilation[l]})).collect();
    let tensors: Vec<_> = f.tensors().collect();
    let params: u64 = tensors.iter().map(|t| t.shape.n_elements()).sum();
    if json_out {
        let t = tensors_json(&tensors);
        println!(
            "{}",
            json!({
                "file_bytes": file_bytes, "architecture": "pixelcnn", "quant": meta_str(f, keys::QUANT),
                "hyperparameters": {"height": c.height, "width": c.width, "channels": c.channels,
                    "out_hidden": c.out_hidden, "layers": layers, "head": c.head.name(), "levels": c.levels,
                    "head_channels": c.n_params()},
                "stored_values": params, "arena": {"bytes": arena}, "checksum_verified": verify, "tensors": t,
            })
        );
        return Ok(());
    }
    println!("{}: {} bytes, pixelcnn, {} weights", path.display(), file_bytes, meta_str(f, keys::QUANT));
    println!("  name           {}", meta_str(f, keys::GENERAL_NAME));
    println!(
        "  image          {}x{}, {} levels, head {} ({} channels)",
        c.height,
        c.width,
        c.levels,
        c.head.name(),
        c.n_params()
    );
    let geo: Vec<String> = (0..c.n_layers).map(|l| format!("{}:{}", c.kernel[l], c.dilation[l])).collect();
    println!(
        "  stacks         {} channels, {} gated layers (kernel:dilation {}), output gate {}",
        c.channels,
        c.n_layers,
        geo.join(","),
        c.out_hidden
    );
    println!("  arena          {arena} bytes (cached generation and scoring)");
    if verify {
        println!("  checksum       ok");
    }
    println!("  tensors        {} ({} stored values, padding included)", tensors.len(), params);
    print_tensors(&tensors);
    Ok(())
}

fn graph(model: &PixelGraph<'_>, path: &Path, file_bytes: usize, verify: bool, json_out: bool) -> Result<()> {
    let c = model.config();
    let f = model.file();
    let arena = model.memory_plan(&GraphSessionConfig::default())?;
    let arena_full = model.memory_plan(&GraphSessionConfig::full(1))?;
    let tensors: Vec<_> = f.tensors().collect();
    let convs = tensors.iter().filter(|t| t.name.ends_with(".taps")).count();
    let params: u64 = tensors.iter().map(|t| t.shape.n_elements()).sum();
    if json_out {
        let t = tensors_json(&tensors);
        println!(
            "{}",
            json!({
                "file_bytes": file_bytes, "architecture": "pixelgraph", "quant": meta_str(f, keys::QUANT),
                "hyperparameters": {"height": c.height, "width": c.width, "nodes": c.n_nodes, "convolutions": convs,
                    "head": c.head.name(), "levels": c.levels, "head_channels": c.n_params()},
                "stored_values": params, "arena": {"bytes": arena, "bytes_full_forward": arena_full},
                "checksum_verified": verify, "tensors": t,
            })
        );
        return Ok(());
    }
    println!("{}: {} bytes, pixelgraph, {} weights", path.display(), file_bytes, meta_str(f, keys::QUANT));
    println!("  name           {}", meta_str(f, keys::GENERAL_NAME));
    println!(
        "  image          {}x{}, {} levels, head {} ({} channels)",
        c.height,
        c.width,
        c.levels,
        c.head.name(),
        c.n_params()
    );
    println!("  graph          {} nodes, {convs} convolutions", c.n_nodes);
    println!("  arena          {arena} bytes (cached generation and scoring), {arena_full} with the full forward");
    if verify {
        println!("  checksum       ok");
    }
    println!("  tensors        {} ({} stored values, padding included)", tensors.len(), params);
    print_tensors(&tensors);
    Ok(())
}
