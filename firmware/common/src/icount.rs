//! Instruction counts from qemu, without wall time.
//!
//! Run qemu with `-icount shift=0`: the virtual clock then advances exactly 1 ns per
//! guest instruction, independent of the host. SysTick, clocked from the processor
//! clock (25 MHz on qemu's mps2 boards), counts one tick per 40 ns, i.e. per 40
//! instructions. Reading it before and after a piece of code gives that code's
//! instruction count to within one tick (±40 instructions), plus the few instructions
//! the reads themselves take. [`calibrate`] checks this on a loop of known length.
//!
//! What is counted: every guest instruction executed, as qemu retires it (an
//! instruction skipped by an `IT` block counts, a semihosting call counts as its one
//! `BKPT`, the wrap exception below adds about 8 instructions per 671 M). That is an
//! instruction count, not a cycle count: a real Cortex-M4 spends 1 cycle on most
//! data-processing instructions (`SMLAD` included), 2 on a load (1 when it follows
//! another), 2 to 4 on a taken branch.
//!
//! Without `-icount` the virtual clock follows host time and the numbers mean nothing;
//! [`calibrate`] then fails its check, and callers should report no counts.
//!
//! Call [`start`] once at boot, and wrap the code to measure in [`measure`].

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// The processor clock SysTick counts on qemu's mps2 boards (`SYSCLK_FRQ` in qemu's
/// `hw/arm/mps2.c`).
pub const CPU_HZ: u64 = 25_000_000;
/// Guest instructions per SysTick tick under `-icount shift=0` (1 ns per instruction).
pub const INSTRUCTIONS_PER_TICK: u64 = 1_000_000_000 / CPU_HZ;

/// SysTick's reload: the full 24 bits, so it wraps every 2^24 ticks (671 M
/// instructions); the wraps are counted by the exception below.
const RELOAD: u32 = 0x00ff_ffff;
/// Ticks per wrap.
const PERIOD: u64 = RELOAD as u64 + 1;

/// SysTick wraps since [`start`].
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    // Single core, and this handler does not preempt itself: load + store is atomic
    // with respect to the readers in thread mode.
    WRAPS.store(WRAPS.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Starts SysTick on the processor clock, free-running, with its wrap interrupt.
pub fn start(mut syst: SYST) {
    syst.disable_counter();
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    WRAPS.store(0, Ordering::Relaxed);
    syst.enable_interrupt();
    syst.enable_counter();
    // Dropping the `SYST` token leaves the timer running; from here on only the
    // exception and the raw reads in `ticks` touch it.
}

/// Ticks since [`start`], less one (monotonic; 2^56 ticks before it wraps).
#[inline(never)]
pub fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = SYST::get_current();
        // The counter reads 0 for the one tick after its 1 -> 0 step, the step that
        // raises the wrap exception: whether `w` counts that wrap yet is ambiguous, so
        // wait that tick out (at most 40 instructions). A wrap between the two loads
        // would pair the old count with the new value: read again.
        if v != 0 && WRAPS.load(Ordering::Relaxed) == w {
            return u64::from(w) * PERIOD + u64::from(RELOAD - v);
        }
    }
}

/// Runs `f` and returns its result and the guest instructions it executed (within
/// ±[`INSTRUCTIONS_PER_TICK`], when qemu runs with `-icount shift=0`).
#[inline(always)]
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let t0 = ticks();
    let r = f();
    let t1 = ticks();
    (r, (t1 - t0) * INSTRUCTIONS_PER_TICK)
}

/// The check of the method on a loop of known length.
pub struct Calibration {
    /// Instructions the loop executes (2 per iteration).
    pub expected: u64,
    /// What [`measure`] reported for it.
    pub measured: u64,
    /// What [`measure`] reports for nothing at all.
    pub empty: u64,
}

impl Calibration {
    /// Whether the measurement is within its stated precision: one tick either way,
    /// plus a tick for the reads' own instructions.
    pub fn ok(&self) -> bool {
        self.measured.abs_diff(self.expected) <= 2 * INSTRUCTIONS_PER_TICK && self.empty <= INSTRUCTIONS_PER_TICK
    }
}

/// Checks the counter on a loop of 2,000,000 instructions and logs the result (the line
/// scripts/firmware-lib.sh's calibration check reads); whether counts mean anything.
pub fn calibrate_and_log() -> bool {
    let cal = calibrate(1_000_000);
    let counting = cal.ok();
    defmt::info!(
        "icount: a loop of {=u64} instructions measured {=u64}, an empty measurement {=u64} ({=u64} instructions per SysTick tick): {=str}",
        cal.expected,
        cal.measured,
        cal.empty,
        INSTRUCTIONS_PER_TICK,
        if counting { "ok" } else { "the clock is not instruction-driven (run qemu with -icount shift=0); no counts" }
    );
    counting
}

/// Measures a `subs`/`bne` loop of `2 * iterations` instructions and an empty closure.
pub fn calibrate(iterations: u32) -> Calibration {
    let ((), empty) = measure(|| ());
    let ((), measured) = measure(|| spin(iterations.max(1)));
    Calibration { expected: 2 * u64::from(iterations.max(1)), measured, empty }
}

/// Exactly `2 * n` instructions for `n >= 1` (n = 0 would run 2^32 iterations).
#[inline(always)]
fn spin(n: u32) {
    // SAFETY: a register-only countdown loop: no memory, no stack; it clobbers only
    // the flags (not declared preserved) and its own register.
    unsafe {
        core::arch::asm!("1:", "subs {n}, {n}, #1", "bne 1b", n = inout(reg) n => _, options(nomem, nostack));
    }
}
