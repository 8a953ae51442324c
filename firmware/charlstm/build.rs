//! Build-time facts the firmware embeds, computed on the host from the same model file:
//!
//! - `plan.rs`: `ARENA_BYTES`, the runtime's own memory plan of the character LSTM
//!   (`Rnn::memory_plan`: the state and one step's scratch, whatever the text's length),
//!   and `VOCAB`; the firmware checks both again at start-up.
//! - `memory.x` on the linker's search path (cortex-m-rt's `link.x` includes it).

use std::env;
use std::fs;
use std::path::PathBuf;

use arq::aligned::AlignedBytes;
use arq::Rnn;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let model_path = manifest.join("../../models/rnn/char-lstm-q8.arq");
    for p in [&model_path, &manifest.join("memory.x")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let bytes = fs::read(&model_path).unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let aligned = AlignedBytes::copy_of(&bytes);
    let model =
        Rnn::load(aligned.bytes()).unwrap_or_else(|e| panic!("{}: not a loadable model: {e}", model_path.display()));
    let plan = model.memory_plan().expect("memory plan");
    fs::write(
        out.join("plan.rs"),
        format!(
            "/// Arena bytes of a session of `char-lstm-q8.arq` (build.rs).\n\
             pub const ARENA_BYTES: usize = {plan};\n\
             /// The vocabulary the build saw.\npub const VOCAB: usize = {vocab};\n",
            vocab = model.config().vocab
        ),
    )
    .unwrap();
    fs::copy(manifest.join("memory.x"), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
}
