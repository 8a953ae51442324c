//! Build-time facts the firmware embeds, computed on the host from the same model file:
//!
//! - `plan.rs`: `ARENA_BYTES`, the arena of a session at the model's full context with a
//!   q8 KV cache, one token per pass, from the runtime's own memory plan
//!   (`Model::memory_plan`), so the static arena is exactly what the model needs; the
//!   firmware checks it again at start-up.
//! - `memory.x` on the linker's search path (cortex-m-rt's `link.x` includes it).

use std::env;
use std::fs;
use std::path::PathBuf;

// The runtime's own 64-byte aligned buffer (std feature): the reader needs an aligned base.
use arq::aligned::AlignedBytes;
use arq::{KvDtype, Model, SessionConfig};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let model_path = manifest.join("../../models/tinygpt/tinygpt-q8.arq");
    for p in [&model_path, &manifest.join("memory.x")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let bytes = fs::read(&model_path).unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let aligned = AlignedBytes::copy_of(&bytes);
    let model =
        Model::load(aligned.bytes()).unwrap_or_else(|e| panic!("{}: not a loadable model: {e}", model_path.display()));
    let c = model.config();
    let cfg = SessionConfig { ctx: c.ctx_train, batch: 1, threads: 1, kv: KvDtype::Q8, seqs: 1 };
    let plan = model.memory_plan(&cfg).expect("memory plan");
    fs::write(
        out.join("plan.rs"),
        format!(
            "/// Arena bytes of a session of `tinygpt-q8.arq` at its full context ({ctx}), one\n\
             /// token per pass, q8 KV cache (build.rs).\n\
             pub const ARENA_BYTES: usize = {plan};\n\
             /// Context and vocabulary the build saw.\n\
             pub const CTX: usize = {ctx};\npub const VOCAB: usize = {vocab};\n",
            ctx = c.ctx_train,
            vocab = c.vocab
        ),
    )
    .unwrap();

    fs::copy(manifest.join("memory.x"), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
}
