//! Facts about the target that `cfg` cannot state on stable Rust.
//!
//! `arq_arm_dsp`: the target has the Arm DSP extension (`SXTB16`, `SMLAD`), so the
//! `dsp` kernel tier (`src/kernels/arm/`) is compiled in. rustc sets
//! `target_feature = "dsp"` for such targets only on nightly (Arm target features are
//! unstable, `arm_target_feature`): a stable build for `thumbv7em-none-eabihf` sees no
//! Arm features at all and would silently fall back to the scalar kernels. The target
//! name says it on every toolchain: every ARMv7E-M core (Cortex-M4/M7, `thumbv7em-*`)
//! and every ARMv7-A/R core (`armv7*`, `thumbv7a-*`) has the instructions.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(arq_arm_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let (target, arch, features) = (var("TARGET"), var("CARGO_CFG_TARGET_ARCH"), var("CARGO_CFG_TARGET_FEATURE"));
    let named = ["thumbv7em", "armv7", "thumbv7a"].iter().any(|p| target.starts_with(p));
    let featured = features.split(',').any(|f| f == "dsp");
    if arch == "arm" && (named || featured) {
        println!("cargo::rustc-cfg=arq_arm_dsp");
    }
}
