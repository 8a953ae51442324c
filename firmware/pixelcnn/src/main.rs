//! Demo 2 of the arq firmware: the `digits17` PixelCNN (8x8 digits, 17 grey levels, q8
//! weights) on a Cortex-M4F, from flash, with no heap.
//!
//! 1. Checks the instruction counter ([`icount`]) on a loop of known length, logs the
//!    kernel tier `kernels::best()` picks (`dsp` on a Cortex-M4) and checks the static
//!    arena against the model's memory plan.
//! 2. Samples two digits with the cached generator (image `i` seeded `SEED + i`,
//!    temperature 1), printed as ASCII art exactly as `arq sample --ascii` prints them,
//!    plus each image's levels as one line of base-17 digits (`0`..`g`).
//! 3. Scores test image 0 of `digits_test.npy`: NLL in nats and bits/dim, and the
//!    NLL's f64 bits, so the host can check it is bit-identical.
//! 4. Repeats 2 and 3 on the scalar tier (levels and NLL again, no art), and logs the
//!    guest instructions of every sample and score on both tiers (under qemu
//!    `-icount shift=0`).
//! 5. Exits qemu through semihosting: 0 on success, 1 on any error or panic.
//!
//! Every line goes through defmt (semihosting transport), decoded on the host with
//! `defmt-print`. `scripts/test-firmware.sh` compares it all with the host `arq`.
#![no_std]
#![no_main]


use arq::kernels::{self, Kernels};
use arq::{PixelCnn, PixelSession, PixelSessionConfig};
use arq_fw_common::{icount, run_demo, Aligned};
use cortex_m_rt::entry;
use defmt_semihosting as _;
use heapless::String;
use rand_core::SeedableRng;
use rand_pcg::Pcg32;

mod plan {
    include!(concat!(env!("OUT_DIR"), "/plan.rs"));
}
use plan::{ARENA_BYTES, HEIGHT, LEVELS, WIDTH};

/// The model, in flash (`.rodata`).
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../models/pixelcnn/digits17-q8.arq"));

/// Image 0 of `models/pixelcnn/digits_test.npy`, extracted by build.rs.
static TEST_IMAGE: [u8; HEIGHT * WIDTH] = *include_bytes!(concat!(env!("OUT_DIR"), "/test_image.bin"));

/// The host's seed for `arq sample -n 2 --seed 7`.
const SEED: u64 = 7;
const N_SAMPLES: u64 = 2;
const TEMP: f32 = 1.0;
/// `arq sample --ascii`'s ramp, darkest to brightest; each pixel is printed twice.
const RAMP: &[u8] = b" .:-=+*#%@";
/// One character per level in the `levels` lines.
const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[entry]
fn main() -> ! {
    run_demo(run)
}

fn run() -> Result<(), arq::Error> {
    defmt::info!("arq firmware demo 2: digits17 PixelCNN on a Cortex-M4F");
    let counting = icount::calibrate_and_log();

    let model = PixelCnn::load(&MODEL.0)?;
    let c = model.config();
    defmt::info!(
        "model: {=usize} bytes in flash, {=usize}x{=usize}, {=usize} levels, {=usize} gated layers of {=usize} channels",
        MODEL.0.len(),
        c.height,
        c.width,
        c.levels,
        c.n_layers,
        c.channels,
    );
    if (c.height, c.width, c.levels) != (HEIGHT, WIDTH, LEVELS) {
        return Err(arq::Error::BadInput("the model differs from the one build.rs planned for"));
    }
    let best = model.kernels();
    defmt::info!("kernels: {=str} (kernels::best())", best.name);

    let cfg = PixelSessionConfig::default();
    let need = model.memory_plan(&cfg)?;
    defmt::info!("arena: memory plan {=usize} bytes, static arena {=usize} bytes", need, ARENA_BYTES);
    if need > ARENA_BYTES {
        return Err(arq::Error::ArenaTooSmall { need, have: ARENA_BYTES });
    }
    // The one place the arena is taken: `singleton!` hands out its `&'static mut` once.
    let Some(arena) = cortex_m::singleton!(ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES]) else {
        return Err(arq::Error::BadConfig("arena already taken"));
    };

    // The best tier draws the ASCII art; the scalar tier then runs the same work, for
    // its instruction counts and to show on the device that both give the same bits.
    let fast = run_tier(best, arena, counting, true)?;
    if best.name != kernels::SCALAR.name {
        let slow = run_tier(&kernels::SCALAR, arena, counting, false)?;
        if counting {
            // Hundredths, rounded: integers only (no f64 formatting needed).
            let (f, s) = (fast.iter().sum::<u64>().max(1), slow.iter().sum::<u64>());
            let x100 = (s * 100 + f / 2) / f;
            defmt::println!(
                "instructions speed-up {=str} over scalar: {=u64}.{=u64:02}x (2 samples + 1 score)",
                best.name,
                x100 / 100,
                x100 % 100
            );
        }
    }
    Ok(())
}

/// Samples the two digits and scores test image 0 on kernel tier `k`, logging the
/// levels, the NLL and (when `counting`) each one's guest instructions; `art` also
/// prints the samples as ASCII art. Returns the instructions of sample 0, sample 1 and
/// the score.
fn run_tier(k: &'static Kernels, arena: &mut [u8], counting: bool, art: bool) -> Result<[u64; 3], arq::Error> {
    let mut model = PixelCnn::load(&MODEL.0)?;
    model.set_kernels(k);
    let mut session = PixelSession::new(&model, arena, PixelSessionConfig::default())?;
    let mut counts = [0u64; 3];

    // Two samples, as `arq sample MODEL -n 2 --seed 7 --ascii` makes them.
    let mut img = [0u8; HEIGHT * WIDTH];
    for i in 0..N_SAMPLES {
        let (done, n) = icount::measure(|| {
            let mut rng = Pcg32::seed_from_u64(SEED.wrapping_add(i));
            session.sample(&mut img, 0, TEMP, &mut rng)
        });
        done?;
        counts[i as usize] = n;
        if art {
            defmt::info!("sample {=u64} (seed {=u64}, temperature 1):", i, SEED + i);
            for row in img.chunks_exact(WIDTH) {
                let mut line: String<{ 2 * WIDTH }> = String::new();
                for &v in row {
                    let ch = RAMP[v as usize * (RAMP.len() - 1) / (LEVELS - 1)] as char;
                    // Capacity is exactly two characters per pixel.
                    let _ = line.push(ch);
                    let _ = line.push(ch);
                }
                defmt::println!("art|{=str}|", line.as_str());
            }
        }
        let mut levels: String<{ HEIGHT * WIDTH }> = String::new();
        for &v in &img {
            let _ = levels.push(DIGITS[v as usize] as char);
        }
        defmt::println!("levels {=str} {=u64} {=str}", k.name, i, levels.as_str());
        if counting {
            let per_pixel = n / (HEIGHT * WIDTH) as u64;
            defmt::println!(
                "instructions {=str} sample {=u64}: {=u64} per image, {=u64} per pixel",
                k.name,
                i,
                n,
                per_pixel
            );
        }
    }

    // Score test image 0.
    let (nll, n) = icount::measure(|| session.nll(&TEST_IMAGE));
    let nll = nll?;
    counts[2] = n;
    let bpd = nll / (HEIGHT * WIDTH) as f64 / core::f64::consts::LN_2;
    defmt::println!(
        "score {=str} test image 0: nll {=f64} nats, {=f64} bits/dim, nll bits {=u64:#x}",
        k.name,
        nll,
        bpd,
        nll.to_bits()
    );
    if counting {
        defmt::println!("instructions {=str} score: {=u64} per image", k.name, n);
    }
    Ok(counts)
}
