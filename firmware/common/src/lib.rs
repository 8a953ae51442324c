//! What every arq firmware shares: instruction counts from qemu ([`icount`]), the stack
//! high-water mark (painted stack, [`stack`]), the panic and hard-fault handlers, and the
//! exit through semihosting. Linking this crate installs the handlers (and `icount`'s
//! SysTick handler).
#![no_std]

pub mod icount;

use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};

/// A 64-byte aligned wrapper for a model blob in flash: `include_bytes!` gives a
/// `&[u8; N]` with alignment 1, and the `.arq` reader needs a 64-byte aligned base
/// (tensors are aligned to 64 inside the file and used in place).
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

/// A demo's whole `main`: paints the stack, starts the instruction counter, runs
/// `run`, logs its error if any and the stack high-water mark, and exits qemu (0 when
/// `run` succeeded).
pub fn run_demo<E: core::fmt::Display>(run: impl FnOnce() -> Result<(), E>) -> ! {
    stack::paint();
    if let Some(p) = cortex_m::Peripherals::take() {
        icount::start(p.SYST);
    }
    let ok = match run() {
        Ok(()) => true,
        Err(e) => {
            defmt::error!("error: {}", defmt::Display2Format(&e));
            false
        }
    };
    defmt::info!("stack: {=usize} bytes used (high-water mark)", stack::used());
    exit(ok)
}

/// Ends the qemu run: exit code 0 when `ok`, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok { EXIT_SUCCESS } else { EXIT_FAILURE });
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Stack high-water mark by painting: the unused stack below `main`'s frame is filled
/// with a pattern at start-up, and the lowest overwritten word gives the deepest use.
pub mod stack {
    const PATTERN: u32 = 0xA5C3_5A3C;
    /// How far below the start-up stack pointer to paint (the RAM between the statics
    /// and this window stays unpainted; the demos use a few KiB).
    const WINDOW: usize = 256 * 1024;
    /// Left untouched below the current stack pointer (this function's own spills).
    const GUARD: usize = 256;

    extern "C" {
        /// The initial stack pointer (top of RAM), from cortex-m-rt's `link.x`.
        static _stack_start: u32;
        /// The end of the statics (`.bss`, `.uninit`): the stack may grow down to here.
        static __sheap: u32;
    }

    fn bounds() -> (usize, usize) {
        let top = core::ptr::addr_of!(_stack_start) as usize;
        let floor = core::ptr::addr_of!(__sheap) as usize;
        let low = top.saturating_sub(WINDOW).max(floor);
        (low.next_multiple_of(4), top)
    }

    /// Paints the free stack; call first thing in `main`.
    #[inline(never)]
    pub fn paint() {
        let (low, _) = bounds();
        let sp = cortex_m::register::msp::read() as usize - GUARD;
        let mut p = low;
        while p < sp {
            // SAFETY: `[low, sp)` is RAM between the end of the statics and the current
            // stack pointer (minus a guard), owned by no object; no interrupt is enabled,
            // so nothing else uses the stack below `sp` while this runs. Aligned to 4.
            unsafe { core::ptr::write_volatile(p as *mut u32, PATTERN) };
            p += 4;
        }
    }

    /// Bytes of stack used so far (from the top of RAM down to the lowest word that no
    /// longer holds the pattern).
    pub fn used() -> usize {
        let (low, top) = bounds();
        let mut p = low;
        // SAFETY: reads aligned words of RAM in `[low, top)`; the words below the
        // current stack pointer belong to no object, the ones above are plain integers
        // or padding read as `u32` through a volatile read (no reference is formed).
        while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PATTERN {
            p += 4;
        }
        top - p
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {=u32:#x}", ef.pc());
    exit(false)
}
