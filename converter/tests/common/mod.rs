//! Test models made on the spot: a tiny LLaMA-shaped `.arq` with seeded random weights
//! and a byte-level tokenizer, and minimal GGUF files.

#![allow(dead_code)]

use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::quant::quantize_weights_q8;

/// GPT-2's byte-to-unicode alphabet: the string form of each single-byte token.
pub fn byte_token(b: u8) -> String {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b).to_string();
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap().to_string()
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    }
}

/// A 2-layer LLaMA (dim 64, 4 heads, 2 KV heads, ffn 128, context 64) over 3 control
/// tokens and the 256 bytes, with q8 matrices.
pub fn tiny_llama_arq(seed: u64) -> Vec<u8> {
    let (dim, layers, heads, kv_heads, ffn, ctx) = (64u64, 2usize, 4u64, 2u64, 128u64, 64u64);
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend((0..=255u8).map(byte_token));
    let mut types = vec![3i32; 3];
    types.extend(std::iter::repeat_n(1, 256));
    let merges: Vec<String> = Vec::new();
    let blob = arq::tokenizer::build_blob(&tokens, &types, &merges).unwrap();
    let vocab = tokens.len() as u64;
    let kv_dim = kv_heads * dim / heads;

    let mut w = ArqWriter::new();
    for (k, v) in [
        ("arq.architecture", Meta::Str("llama".into())),
        ("arq.quant", Meta::Str("q8".into())),
        ("general.name", Meta::Str("tiny test llama".into())),
        ("llama.vocab_size", Meta::U64(vocab)),
        ("llama.context_length", Meta::U64(ctx)),
        ("llama.embedding_length", Meta::U64(dim)),
        ("llama.block_count", Meta::U64(layers as u64)),
        ("llama.feed_forward_length", Meta::U64(ffn)),
        ("llama.attention.head_count", Meta::U64(heads)),
        ("llama.attention.head_count_kv", Meta::U64(kv_heads)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("tokenizer.model", Meta::Str("gpt2".into())),
        ("tokenizer.pre", Meta::Str("smollm".into())),
        ("tokenizer.add_bos", Meta::Bool(false)),
        ("tokenizer.bos_id", Meta::U32(1)),
        ("tokenizer.eos_id", Meta::U32(2)),
        (
            "tokenizer.chat_template",
            Meta::Str("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into()),
        ),
    ] {
        w.meta(k, v);
    }
    let mut rng = Lcg(seed);
    let mut matrix = |w: &mut ArqWriter, name: &str, rows: u64, cols: u64| {
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
        let blocks = quantize_weights_q8(&vals);
        w.tensor(name, Dtype::Q8, &[rows, cols], bytemuck::cast_slice(&blocks).to_vec()).unwrap();
    };
    let ones = |n: u64| bytemuck::cast_slice(&vec![1.0f32; n as usize]).to_vec();
    matrix(&mut w, "token_embd", vocab, dim);
    w.tensor("output_norm", Dtype::F32, &[dim], ones(dim)).unwrap();
    w.tensor("tokenizer", Dtype::U8, &[blob.len() as u64], blob).unwrap();
    for l in 0..layers {
        w.tensor(&format!("blk.{l}.attn_norm"), Dtype::F32, &[dim], ones(dim)).unwrap();
        matrix(&mut w, &format!("blk.{l}.attn_q"), dim, dim);
        matrix(&mut w, &format!("blk.{l}.attn_k"), kv_dim, dim);
        matrix(&mut w, &format!("blk.{l}.attn_v"), kv_dim, dim);
        matrix(&mut w, &format!("blk.{l}.attn_output"), dim, dim);
        w.tensor(&format!("blk.{l}.ffn_norm"), Dtype::F32, &[dim], ones(dim)).unwrap();
        matrix(&mut w, &format!("blk.{l}.ffn_gate"), ffn, dim);
        matrix(&mut w, &format!("blk.{l}.ffn_up"), ffn, dim);
        matrix(&mut w, &format!("blk.{l}.ffn_down"), dim, ffn);
    }
    let mut out = Vec::new();
    w.write(&mut out).unwrap();
    out
}

/// A GGUF v3 file with string metadata only and no tensors.
pub fn gguf_with_strings(kv: &[(&str, &str)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        b.extend_from_slice(&(k.len() as u64).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&8u32.to_le_bytes()); // string
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `arq-test-{tag}-{pid}-{n}`, fresh and empty.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("arq-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
    /// The names in the directory, sorted (to check that a failed command left nothing).
    pub fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
