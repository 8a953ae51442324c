//! The runtime's one logging shim: `defmt` (feature `defmt`: firmware, decoded on the
//! host by `defmt-print`), `log` (feature `log`: hosts, whatever logger the application
//! installs), or nothing at all (the default: the arguments are type-checked and
//! compiled away). With both features, `defmt` wins.
//!
//! Messages use only `{}` placeholders over integers and `&str`, which both back ends
//! format, so one call site serves all three. The runtime logs what a device
//! integrator wants to see once: which model and kernel tier loaded, how big an arena a
//! session took. Nothing is logged per token.

/// An informational message (model loads).
macro_rules! info {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        log::info!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        if false {
            let _ = core::format_args!($($arg)*);
        }
    }};
}

/// A debugging message (session set-up).
macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::debug!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        if false {
            let _ = core::format_args!($($arg)*);
        }
    }};
}

pub(crate) use {debug, info};

#[cfg(all(test, feature = "std", feature = "log", not(feature = "defmt")))]
mod tests {
    use std::string::{String, ToString};
    use std::sync::Mutex;
    use std::vec::Vec;

    /// Captures the runtime's records (the `log` facade takes one logger per process).
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            if r.target().starts_with("arq") {
                self.0.lock().unwrap().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    #[test]
    fn model_loads_and_sessions_are_logged_through_the_log_facade() {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Debug);
        use crate::models::pixelcnn::synth::{synthetic, SynthSpec};
        let spec = SynthSpec::digits_like(4, 4, true);
        let bytes = crate::aligned::AlignedBytes::copy_of(&synthetic(&spec));
        let model = crate::PixelCnn::load(bytes.bytes()).unwrap();
        let cfg = crate::PixelSessionConfig::default();
        let mut arena = std::vec![0u8; model.memory_plan(&cfg).unwrap()];
        let _session = crate::PixelSession::new(&model, &mut arena, cfg).unwrap();
        let seen = CAPTURE.0.lock().unwrap().clone();
        assert!(seen.iter().any(|m| m.starts_with("arq: pixelcnn model 4x4")), "{seen:?}");
        assert!(seen.iter().any(|m| m.starts_with("arq: pixelcnn session, arena")), "{seen:?}");
    }
}
