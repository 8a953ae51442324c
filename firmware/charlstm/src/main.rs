//! Demo 3 of the arq firmware: the character-level LSTM (`models/rnn/char-lstm`, 2 layers
//! of 128, q8) on a Cortex-M4F, from flash, with no heap. Its state does not grow with
//! the text: the arena is the state and one step's scratch, whatever the length.
//!
//! 1. Checks the static arena against the model's memory plan.
//! 2. Continues [`PROMPT`] by [`N_GEN`] characters, sampled exactly as
//!    `arq generate MODEL -p PROMPT -n N_GEN --seed 7` samples them (temperature 0.8,
//!    top-p 0.95, min-p 0.05), and prints the text.
//! 3. For each of [`PREFIXES`], prints the three most likely next characters with their
//!    log-probabilities' f64 bits (`arq next MODEL -p PREFIX --top 3 --json`).
//! 4. Runs 2 and 3 again on the scalar kernel tier, with the guest instructions per
//!    character on both tiers when qemu runs with `-icount shift=0`.
//! 5. Exits qemu through semihosting: 0 on success, 1 on any error or panic.
//!
//! `scripts/test-firmware-charlstm.sh` compares it all with the host `arq`.
#![no_std]
#![no_main]

use arq::kernels::{self, Kernels};
use arq::sampler::{Candidate, Sampler, SamplerConfig};
use arq::tokenizer::Tokenizer;
use arq::{math, Rnn, RnnSession};
use arq_fw_common::{icount, run_demo, Aligned};
use cortex_m_rt::entry;
use defmt_semihosting as _;
use heapless::{String, Vec};

mod plan {
    include!(concat!(env!("OUT_DIR"), "/plan.rs"));
}
use plan::{ARENA_BYTES, VOCAB};

/// The model, in flash (`.rodata`).
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../models/rnn/char-lstm-q8.arq"));

const PROMPT: &str = "To be, or not to be";
const N_GEN: usize = 60;
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
const PREFIXES: [&str; 3] = ["My lord, I", "What is the matt", "KING.\n"];
const TOP: usize = 3;
/// The longest text handled: the prompt and what is generated.
const MAX_TEXT: usize = 128;

#[entry]
fn main() -> ! {
    run_demo(run)
}

fn run() -> Result<(), arq::Error> {
    defmt::info!("arq firmware demo 3: a character-level LSTM on a Cortex-M4F");
    let counting = icount::calibrate_and_log();
    let model = Rnn::load(&MODEL.0)?;
    let c = model.config();
    defmt::info!(
        "model: {=usize} bytes in flash, {=str}, {=usize} layers of {=usize}, embedding {=usize}, vocab {=usize}",
        MODEL.0.len(),
        c.cell.name(),
        c.layers,
        c.hidden,
        c.embed,
        c.vocab,
    );
    if c.vocab != VOCAB {
        return Err(arq::Error::BadInput("the model differs from the one build.rs planned for"));
    }
    let best = model.kernels();
    let need = model.memory_plan()?;
    defmt::info!("arena: memory plan {=usize} bytes, static arena {=usize} bytes", need, ARENA_BYTES);
    defmt::info!("state: {=usize} bytes, the same after any number of characters", c.state_len() * 4);
    if need > ARENA_BYTES {
        return Err(arq::Error::ArenaTooSmall { need, have: ARENA_BYTES });
    }
    let Some(arena) = cortex_m::singleton!(ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES]) else {
        return Err(arq::Error::BadConfig("arena already taken"));
    };
    let fast = run_tier(best, arena, counting)?;
    if best.name != kernels::SCALAR.name {
        let slow = run_tier(&kernels::SCALAR, arena, counting)?;
        if counting {
            let x100 = (slow * 100 + fast / 2) / fast.max(1);
            defmt::println!(
                "instructions speed-up {=str} over scalar: {=u64}.{=u64:02}x per character",
                best.name,
                x100 / 100,
                x100 % 100
            );
        }
    }
    Ok(())
}

/// Continues [`PROMPT`] and ranks the next characters after each of [`PREFIXES`] on
/// kernel tier `k`. Returns the instructions per generated character.
fn run_tier(k: &'static Kernels, arena: &mut [u8], counting: bool) -> Result<u64, arq::Error> {
    let mut model = Rnn::load(&MODEL.0)?;
    model.set_kernels(k);
    let tok = model.tokenizer()?;
    let mut session = RnnSession::new(&model, arena)?;

    let mut ids = encode(&tok, PROMPT)?;
    let mut sampler = Sampler::new(SAMPLING).map_err(|_| arq::Error::BadConfig("sampler settings"))?;
    let mut scratch = [Candidate::default(); VOCAB];
    let mut logits = [0f32; VOCAB];
    let (fed, prompt_instr) = icount::measure(|| -> Result<(), arq::Error> {
        for &id in &ids {
            logits.copy_from_slice(session.step(id)?);
        }
        Ok(())
    });
    fed?;
    let mut text: String<{ 2 * MAX_TEXT }> = String::new();
    push_escaped(&mut text, PROMPT.as_bytes());
    let mut gen_instr = 0;
    for i in 0..N_GEN {
        let (next, n) = icount::measure(|| sampler.sample(&mut logits, &ids, &mut scratch));
        gen_instr += n;
        let next = next.map_err(|_| arq::Error::BadConfig("sampler"))?;
        ids.push(next).map_err(|_| arq::Error::BadInput("text longer than MAX_TEXT"))?;
        push_escaped(&mut text, tok.token_bytes(next).unwrap_or(b""));
        if i + 1 < N_GEN {
            let (stepped, n) = icount::measure(|| session.step(next).map(|l| logits.copy_from_slice(l)));
            gen_instr += n;
            stepped?;
        }
    }
    defmt::println!("text {=str}|{=str}|", k.name, text.as_str());
    let per_char = gen_instr / N_GEN as u64;
    if counting {
        let prompt_len = PROMPT.len() as u64;
        defmt::println!(
            "instructions {=str}: prompt {=u64} ({=u64} per character), generation {=u64} ({=u64} per character, sampling included)",
            k.name,
            prompt_instr,
            prompt_instr / prompt_len,
            gen_instr,
            per_char
        );
    }

    for prefix in PREFIXES {
        session.reset();
        let ids = encode(&tok, prefix)?;
        let mut logits = [0f32; VOCAB];
        for &id in &ids {
            logits.copy_from_slice(session.step(id)?);
        }
        let lse = math::log_sum_exp(&logits);
        let mut best: Vec<u32, TOP> = Vec::new();
        for _ in 0..TOP {
            // The highest logit not yet taken (the lower id on ties).
            let pick = (0..VOCAB as u32).filter(|id| !best.contains(id)).fold(None, |b: Option<u32>, id| match b {
                Some(b) if logits[b as usize] >= logits[id as usize] => Some(b),
                _ => Some(id),
            });
            if let Some(id) = pick {
                let _ = best.push(id);
            }
        }
        let mut shown: String<{ 2 * MAX_TEXT }> = String::new();
        push_escaped(&mut shown, prefix.as_bytes());
        for &id in &best {
            let lp = logits[id as usize] as f64 - lse;
            let mut ch: String<8> = String::new();
            push_escaped(&mut ch, tok.token_bytes(id).unwrap_or(b""));
            defmt::println!("next {=str}|{=str}|{=u32}|{=str}|{=u64:#x}", k.name, shown.as_str(), id, ch.as_str(), lp.to_bits());
        }
    }
    Ok(per_char)
}

/// The character ids of `text` (every character must be in the vocabulary).
fn encode(tok: &Tokenizer<'_>, text: &str) -> Result<Vec<u32, MAX_TEXT>, arq::Error> {
    if tok.first_unknown(text).is_some() {
        return Err(arq::Error::BadInput("a character outside the vocabulary"));
    }
    let mut ids: Vec<u32, MAX_TEXT> = Vec::new();
    let mut full = false;
    tok.encode_with_scratch(text, false, &mut [], |id| full |= ids.push(id).is_err()).map_err(arq::Error::Tokenizer)?;
    if full || ids.is_empty() {
        return Err(arq::Error::BadInput("prompt is empty or too long"));
    }
    Ok(ids)
}

/// Appends `bytes` as text with newlines and backslashes escaped (`\n`, `\\`), so each
/// log record stays one line.
fn push_escaped<const N: usize>(s: &mut String<N>, bytes: &[u8]) {
    for c in core::str::from_utf8(bytes).unwrap_or("\u{fffd}").chars() {
        let _ = match c {
            '\n' => s.push_str("\\n"),
            '\\' => s.push_str("\\\\"),
            _ => s.push(c),
        };
    }
}
