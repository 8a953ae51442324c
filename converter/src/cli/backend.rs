//! `--backend cpu|gpu|auto`: where a text model's matrix products run.

use std::time::Instant;

use anyhow::{bail, Result};
use arq::linear::Offload;
use arq::parallel::Parallel;
use arq::{math, Model, Session, SessionConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The CPU kernels.
    Cpu,
    /// The q8/q4 matrix products on a GPU through wgpu (Vulkan, Metal, DX12); the rest of
    /// each step stays on the CPU. Fails with an error when there is no usable adapter.
    Gpu,
    /// Time a few steps on both and keep the faster (says which on stderr).
    Auto,
}

#[derive(clap::Args)]
pub struct BackendOpt {
    /// Where the matrix products run.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
}

/// The chosen backend; a session borrows its offload.
pub enum Backend {
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(Box<arq::gpu::GpuMatmul>),
}

impl Backend {
    pub fn offload(&self) -> Option<&dyn Offload> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => Some(&**g),
        }
    }

    /// `cpu`, or `gpu (ADAPTER ...)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => format!("gpu: {}", g.device().describe()),
        }
    }

    /// The adapter's name, for JSON output.
    pub fn adapter(&self) -> Option<String> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => Some(g.device().adapter_name().to_string()),
        }
    }

    /// Calls served by the GPU and the seconds spent in them.
    pub fn gpu_stats(&self) -> Option<(u64, f64)> {
        match self {
            Backend::Cpu => None,
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => {
                let (n, t) = g.stats();
                Some((n, t.as_secs_f64()))
            }
        }
    }
}

#[cfg(feature = "gpu")]
fn open_gpu(model: &Model<'_>, cfg: &SessionConfig) -> Result<Backend, String> {
    let dev = arq::gpu::GpuDevice::new(&Default::default()).map_err(|e| e.to_string())?;
    let g = arq::gpu::GpuMatmul::for_model(dev, model, cfg.batch).map_err(|e| e.to_string())?;
    Ok(Backend::Gpu(Box::new(g)))
}

#[cfg(not(feature = "gpu"))]
fn open_gpu(_: &Model<'_>, _: &SessionConfig) -> Result<Backend, String> {
    Err("this arq was built without the gpu feature".into())
}

/// Opens the backend `arg` asks for, uploading the model's matrices for a GPU. `auto`
/// falls back to the CPU when the GPU cannot run, and otherwise keeps whichever runs a
/// short prompt and a few generated tokens faster; both print their choice on stderr.
pub fn open(arg: BackendArg, model: &Model<'_>, cfg: &SessionConfig, pool: &dyn Parallel) -> Result<Backend> {
    match arg {
        BackendArg::Cpu => Ok(Backend::Cpu),
        BackendArg::Gpu => match open_gpu(model, cfg) {
            Ok(b) => Ok(b),
            Err(e) => bail!("--backend gpu: {e}"),
        },
        BackendArg::Auto => {
            let gpu = match open_gpu(model, cfg) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("backend auto: cpu (gpu unavailable: {e})");
                    return Ok(Backend::Cpu);
                }
            };
            let cpu_s = time_steps(model, cfg, pool, None)?;
            let gpu_s = time_steps(model, cfg, pool, gpu.offload())?;
            let pick = if gpu_s < cpu_s { gpu } else { Backend::Cpu };
            eprintln!(
                "backend auto: {} (a 16-token prompt and 8 steps: cpu {:.0} ms, gpu {:.0} ms)",
                pick.describe(),
                cpu_s * 1e3,
                gpu_s * 1e3
            );
            Ok(pick)
        }
    }
}

/// Seconds for a 16-token prompt and 8 generated tokens (after one warm-up token).
fn time_steps(model: &Model<'_>, cfg: &SessionConfig, pool: &dyn Parallel, off: Option<&dyn Offload>) -> Result<f64> {
    let vocab = model.config().vocab as u32;
    let cfg = SessionConfig { ctx: 32.min(model.config().ctx_train), ..*cfg };
    let mut arena = vec![0u8; model.memory_plan(&cfg)?];
    let mut s = Session::new(model, &mut arena, cfg)?;
    s.set_parallel(pool)?;
    s.set_offload(off)?;
    s.step(0)?;
    s.reset();
    let prompt: Vec<u32> = (0..16.min(cfg.ctx as u32 / 2)).map(|i| (i * 7919) % vocab).collect();
    let t = Instant::now();
    let mut next = math::argmax(s.prefill(&prompt)?) as u32;
    for _ in 0..8.min(cfg.ctx - prompt.len()) {
        next = math::argmax(s.step(next)?) as u32;
    }
    Ok(t.elapsed().as_secs_f64())
}
