//! Demo 1 of the arq firmware: on-device text prediction with `tinygpt` (a character-level
//! GPT-2, 4 layers of 96, context 64, q8 weights) on a Cortex-M4F, from flash, with no heap.
//!
//! 1. Checks the static arena against the model's memory plan (context 64, one token per
//!    pass, q8 KV cache).
//! 2. Continues [`PROMPT`] by [`N_GEN`] characters, sampled exactly as
//!    `arq generate MODEL -p PROMPT -n N_GEN --seed 7 --kv q8` samples them (temperature
//!    0.8, top-p 0.95, min-p 0.05), and prints the text.
//! 3. For each of [`PREFIXES`], prints the three most likely next characters with their
//!    probabilities (`arq next MODEL -p PREFIX --top 3 --kv q8`), and each log-probability's
//!    f64 bits so the host can check them exactly.
//! 4. Runs 2 and 3 again on the scalar kernel tier (the best tier on this part is `dsp`,
//!    SMLAD), with the guest instructions of the prompt and of each generated token on
//!    both tiers when qemu runs with `-icount shift=0` (`arq_fw_common::icount`).
//! 5. Exits qemu through semihosting: 0 on success, 1 on any error or panic.
//!
//! Every line goes through defmt (semihosting transport), decoded on the host with
//! `defmt-print`. `scripts/test-firmware-tinygpt.sh` compares it all with the host `arq`.
#![no_std]
#![no_main]

use arq::sampler::{Candidate, Sampler, SamplerConfig};
use arq::tokenizer::{Tokenizer, SCRATCH_WORDS_PER_BYTE};
use arq::kernels::{self, Kernels};
use arq::{math, KvDtype, Model, Session, SessionConfig};
use arq_fw_common::{icount, run_demo, Aligned};
use cortex_m_rt::entry;
use defmt_semihosting as _;
use heapless::{String, Vec};

mod plan {
    include!(concat!(env!("OUT_DIR"), "/plan.rs"));
}
use plan::{ARENA_BYTES, CTX, VOCAB};

/// The model, in flash (`.rodata`).
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../models/tinygpt/tinygpt-q8.arq"));

const PROMPT: &str = "Once upon a time, ";
const N_GEN: u64 = 40;
/// `arq generate`'s defaults, with seed 7.
const SAMPLING: SamplerConfig = SamplerConfig {
    temperature: 0.8,
    top_k: 0,
    top_p: 0.95,
    min_p: 0.05,
    repeat_penalty: 1.0,
    repeat_last_n: 64,
    seed: 7,
};
const PREFIXES: [&str; 3] = ["The sky is blu", "Here is a simple reci", "She looked at the "];
const TOP: usize = 3;
/// The longest prompt, in bytes (the tokenizer's scratch is sized for it).
const MAX_PROMPT: usize = 32;

#[entry]
fn main() -> ! {
    run_demo(run)
}

fn run() -> Result<(), arq::Error> {
    defmt::info!("arq firmware demo 1: tinygpt (character-level GPT-2) on a Cortex-M4F");
    let counting = icount::calibrate_and_log();
    let model = Model::load(&MODEL.0)?;
    let c = model.config();
    defmt::info!(
        "model: {=usize} bytes in flash, {=str}, vocab {=usize}, dim {=usize}, {=usize} layers, {=usize} heads, context {=usize}",
        MODEL.0.len(),
        c.family.name(),
        c.vocab,
        c.dim,
        c.n_layers,
        c.n_heads,
        c.ctx_train,
    );
    if (c.ctx_train, c.vocab) != (CTX, VOCAB) {
        return Err(arq::Error::BadInput("the model differs from the one build.rs planned for"));
    }
    let best = model.kernels();
    defmt::info!("kernels: {=str} (kernels::best())", best.name);
    let need = model.memory_plan(&SESSION)?;
    defmt::info!("arena: memory plan {=usize} bytes, static arena {=usize} bytes", need, ARENA_BYTES);
    if need > ARENA_BYTES {
        return Err(arq::Error::ArenaTooSmall { need, have: ARENA_BYTES });
    }
    // The one place the arena is taken: `singleton!` hands out its `&'static mut` once.
    let Some(arena) = cortex_m::singleton!(ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES]) else {
        return Err(arq::Error::BadConfig("arena already taken"));
    };

    // The best tier, then the scalar tier on the same work: its instruction counts, and
    // the same bits on the device.
    let fast = run_tier(best, arena, counting)?;
    if best.name != kernels::SCALAR.name {
        let slow = run_tier(&kernels::SCALAR, arena, counting)?;
        if counting {
            // Hundredths, rounded: integers only.
            let x100 = (slow * 100 + fast / 2) / fast.max(1);
            defmt::println!(
                "instructions speed-up {=str} over scalar: {=u64}.{=u64:02}x per generated token",
                best.name,
                x100 / 100,
                x100 % 100
            );
        }
    }
    Ok(())
}

/// The session every run uses: the full context, one token per pass, q8 KV cache.
const SESSION: SessionConfig = SessionConfig { ctx: CTX, batch: 1, threads: 1, kv: KvDtype::Q8, seqs: 1 };

/// Continues [`PROMPT`] and ranks the next characters after each of [`PREFIXES`] on
/// kernel tier `k`, logging the text, the ranks and (when `counting`) the guest
/// instructions of the prompt and of the generated tokens. Returns the instructions per
/// generated token.
fn run_tier(k: &'static Kernels, arena: &mut [u8], counting: bool) -> Result<u64, arq::Error> {
    let mut model = Model::load(&MODEL.0)?;
    model.set_kernels(k);
    let mut session = Session::new(&model, arena, SESSION)?;
    let tok = model.tokenizer()?;

    // Continue the prompt, as `arq generate` does.
    let mut ids = encode(&tok, PROMPT)?;
    let mut sampler = Sampler::new(SAMPLING).map_err(|_| arq::Error::BadConfig("sampler settings"))?;
    let mut scratch = [Candidate::default(); VOCAB];
    let mut logits = [0f32; VOCAB];
    let (prefilled, prompt_instr) = icount::measure(|| session.prefill(&ids).map(|l| logits.copy_from_slice(l)));
    prefilled?;
    let mut text: String<{ 2 * (MAX_PROMPT + CTX) }> = String::new();
    push_escaped(&mut text, PROMPT.as_bytes());
    let mut generated = 0u64;
    let mut gen_instr = 0;
    while generated < N_GEN {
        let (next, n) = icount::measure(|| sampler.sample(&mut logits, &ids, &mut scratch));
        gen_instr += n;
        let next = next.map_err(|_| arq::Error::BadConfig("sampler"))?;
        if tok.is_control(next) {
            break;
        }
        generated += 1;
        ids.push(next).map_err(|_| arq::Error::ContextFull { ctx: CTX })?;
        push_escaped(&mut text, tok.token_bytes(next).unwrap_or(b""));
        if generated == N_GEN || session.pos() >= CTX {
            break;
        }
        let (stepped, n) = icount::measure(|| session.step(next).map(|l| logits.copy_from_slice(l)));
        gen_instr += n;
        stepped?;
    }
    defmt::info!("{=str}: continued {=usize} prompt characters by {=u64} (seed {=u64}):", k.name, ids.len() - generated as usize, generated, SAMPLING.seed);
    defmt::println!("text {=str}|{=str}|", k.name, text.as_str());
    let per_token = gen_instr / generated.max(1);
    if counting {
        let prompt_len = (ids.len() as u64 - generated).max(1);
        defmt::println!(
            "instructions {=str}: prompt {=u64} ({=u64} per token), generation {=u64} ({=u64} per token, sampling included)",
            k.name,
            prompt_instr,
            prompt_instr / prompt_len,
            gen_instr,
            per_token
        );
    }

    // The most likely next characters after each prefix, as `arq next --top 3` ranks them.
    for prefix in PREFIXES {
        session.reset();
        let ids = encode(&tok, prefix)?;
        let logits = session.prefill(&ids)?;
        let lse = math::log_sum_exp(logits);
        let mut best: Vec<u32, TOP> = Vec::new();
        for _ in 0..TOP {
            // The highest logit not yet taken (the lower id on ties).
            let pick = (0..logits.len() as u32).filter(|id| !best.contains(id)).fold(None, |b: Option<u32>, id| match b {
                Some(b) if logits[b as usize] >= logits[id as usize] => Some(b),
                _ => Some(id),
            });
            if let Some(id) = pick {
                let _ = best.push(id);
            }
        }
        let mut shown: String<{ 2 * MAX_PROMPT }> = String::new();
        push_escaped(&mut shown, prefix.as_bytes());
        for &id in &best {
            let lp = logits[id as usize] as f64 - lse;
            let mut ch: String<8> = String::new();
            push_escaped(&mut ch, tok.token_bytes(id).unwrap_or(b""));
            defmt::println!(
                "next {=str}|{=str}|{=u32}|{=str}|{=f64}|{=u64:#x}",
                k.name,
                shown.as_str(),
                id,
                ch.as_str(),
                libm::exp(lp),
                lp.to_bits()
            );
        }
    }
    Ok(per_token)
}

/// The token ids of `text` (no BOS: the model has none).
fn encode(tok: &Tokenizer<'_>, text: &str) -> Result<Vec<u32, CTX>, arq::Error> {
    let mut scratch = [0u32; SCRATCH_WORDS_PER_BYTE * MAX_PROMPT];
    let mut ids: Vec<u32, CTX> = Vec::new();
    let mut full = false;
    tok.encode_with_scratch(text, false, &mut scratch, |id| full |= ids.push(id).is_err())
        .map_err(arq::Error::Tokenizer)?;
    if full || ids.is_empty() {
        return Err(arq::Error::BadInput("prompt is empty or longer than the context"));
    }
    Ok(ids)
}

/// Appends `bytes` as text with newlines and backslashes escaped (`\n`, `\\`), so each
/// log record stays one line.
fn push_escaped<const N: usize>(s: &mut String<N>, bytes: &[u8]) {
    for &b in bytes {
        let _ = match b {
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            _ => s.push(b as char),
        };
    }
}
