//! GPU offload of the q8 and q4 matrix products through wgpu (Vulkan, Metal, DX12).
//!
//! [`GpuDevice`] opens an adapter and compiles the WGSL kernels (`matmul.wgsl`) once;
//! [`GpuMatmul`] uploads one model's matrices once and then serves the
//! [`Offload`] calls of a [`Session`](crate::Session): the CPU
//! quantizes the activations exactly as its own path does, the GPU computes the products,
//! and everything else of the step (norms, RoPE, attention over the KV cache, the
//! residual stream) stays on the CPU.
//!
//! Each kernel computes an output exactly like `kernels/scalar.rs`: the per-block i32
//! dot products are the CPU's bit for bit (with `dot4I8Packed` where the WGSL
//! implementation has it, with i32 arithmetic otherwise), and the float part keeps the
//! same lanes, the same reduction order and a rounding after every product, so on
//! lavapipe the products (and so the logits) are the CPU's bit for bit. The tests allow
//! a small float tolerance for drivers that round differently.
//!
//! What runs where, measured on lavapipe with SmolLM2-135M (`bench/RESULTS.md`): the
//! matrix products take 99 % of a GPU-backend step, so moving norms, RoPE and attention
//! to the device could gain at most the remaining 1 %; they stay on the CPU.
//!
//! Device limits: a matrix larger than the adapter's storage binding or buffer limit is
//! split by rows into several buffers; the workgroup size is capped by the adapter's; and
//! before anything is uploaded the bytes needed are compared with the memory available
//! (wgpu has no query for GPU memory): [`GpuOptions::memory_limit`] if given, else for a
//! CPU adapter (lavapipe) the host's `MemAvailable`, else no pre-check, with buffer
//! creation inside an out-of-memory error scope so a failure is still reported before
//! the first dispatch.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;

use crate::error::Error;
use crate::linear::{Offload, Weight};
use crate::quant::{BlockQ4, BlockQ8, QK8};
use crate::Model;

const SHADER: &str = include_str!("matmul.wgsl");

/// Storage buffers one kernel binds (limit checked against the adapter).
const STORAGE_BUFFERS: u32 = 5;

/// The workgroup size used unless the adapter allows less.
const WORKGROUP: u32 = 64;

/// Why the GPU backend cannot run. Every variant prints as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuError {
    /// No Vulkan, Metal or DX12 adapter.
    NoAdapter,
    /// The adapter lacks something the kernels need.
    Missing { adapter: String, what: String },
    /// The model cannot run here (a dtype the kernels do not cover, a row too large).
    Unsupported { adapter: String, what: String },
    /// The model's buffers need more memory than the adapter has.
    OutOfMemory { adapter: String, need: u64, have: Option<u64>, rule: &'static str },
    /// The device failed (creation, a lost device, a mapping error).
    Device { adapter: String, what: String },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / 1048576.0;
        match self {
            GpuError::NoAdapter => {
                write!(f, "no Vulkan/Metal/DX12 adapter found (install mesa-vulkan-drivers for lavapipe)")
            }
            GpuError::Missing { adapter, what } => write!(f, "adapter \"{adapter}\" lacks {what}"),
            GpuError::Unsupported { adapter, what } => write!(f, "adapter \"{adapter}\": {what}"),
            GpuError::OutOfMemory { adapter, need, have: Some(have), rule } => write!(
                f,
                "the model needs {:.1} MiB of GPU memory; adapter \"{adapter}\" has {:.1} MiB ({rule})",
                mib(*need),
                mib(*have)
            ),
            GpuError::OutOfMemory { adapter, need, have: None, rule } => {
                write!(f, "adapter \"{adapter}\" is out of memory for the model's {:.1} MiB ({rule})", mib(*need))
            }
            GpuError::Device { adapter, what } => write!(f, "adapter \"{adapter}\": {what}"),
        }
    }
}

impl std::error::Error for GpuError {}

/// Knobs for tests and for machines whose memory wgpu cannot see.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use the i32 kernels even where `dot4I8Packed` is available.
    pub force_i32_dot: bool,
    /// A cap on one buffer binding, in bytes, below the adapter's (forces splitting).
    pub max_binding_bytes: Option<u64>,
    /// The GPU memory the model may use, in bytes (see the module docs for the default).
    pub memory_limit: Option<u64>,
}

/// An opened adapter with the kernels compiled (cheap to clone: wgpu handles).
#[derive(Clone)]
pub struct GpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    layout: wgpu::BindGroupLayout,
    q8: wgpu::ComputePipeline,
    q4: wgpu::ComputePipeline,
    packed_dot: bool,
    workgroup: u32,
    opts: GpuOptions,
}

impl GpuDevice {
    /// Opens the first high-performance adapter (a discrete GPU before an integrated one
    /// before a CPU driver such as lavapipe).
    pub fn new(opts: &GpuOptions) -> Result<Self, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::PRIMARY;
        desc.memory_budget_thresholds.for_resource_creation = Some(95);
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|_| GpuError::NoAdapter)?;
        let info = adapter.get_info();
        let name = info.name.clone();
        let missing = |what: String| GpuError::Missing { adapter: name.clone(), what };
        if !adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Err(missing("compute shaders".into()));
        }
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS {
            return Err(missing(format!(
                "{STORAGE_BUFFERS} storage buffers per shader stage (it allows {})",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let workgroup =
            WORKGROUP.min(limits.max_compute_workgroup_size_x).min(limits.max_compute_invocations_per_workgroup);
        if workgroup == 0 || limits.max_compute_workgroup_size_y == 0 {
            return Err(missing("compute workgroups".into()));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("arq"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device { adapter: name.clone(), what: format!("cannot open the device: {e}") })?;

        let packed_dot = !opts.force_i32_dot
            && instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        let source = SHADER.replace("DOT4(", if packed_dot { "dot4I8Packed(" } else { "dot4_i32(" });
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("matmul.wgsl"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let storage = |binding: u32, read_only: bool, dynamic: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: dynamic,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matmul"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true, false),
                storage(2, true, false),
                storage(3, true, false),
                storage(4, true, false),
                storage(5, false, true),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("matmul"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |q4: bool| {
            let constants = [("WG", workgroup as f64), ("Q4", q4 as u8 as f64)];
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(if q4 { "matmul q4" } else { "matmul q8" }),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("matmul"),
                compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
                cache: None,
            })
        };
        let (q8, q4) = (pipeline(false), pipeline(true));
        if let Some(e) = pollster::block_on(scope.pop()) {
            let what = if packed_dot { "a WGSL compiler that takes dot4I8Packed" } else { "a WGSL compiler" };
            return Err(GpuError::Missing { adapter: name, what: format!("{what} ({})", one_line(&e.to_string())) });
        }
        Ok(GpuDevice { device, queue, info, limits, layout, q8, q4, packed_dot, workgroup, opts: opts.clone() })
    }

    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// The adapter's name, type and backend, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}; {} dot products)",
            self.info.name,
            self.info.device_type,
            self.info.backend,
            if self.packed_dot { "dot4I8Packed" } else { "i32" }
        )
    }

    /// Whether the kernels use `dot4I8Packed` (else i32 arithmetic).
    pub fn packed_dot(&self) -> bool {
        self.packed_dot
    }

    /// Whether the adapter is a CPU driver (lavapipe, SwiftShader).
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    fn err(&self, what: impl Into<String>) -> GpuError {
        GpuError::Device { adapter: self.info.name.clone(), what: what.into() }
    }

    /// The largest binding (and buffer) this device takes.
    fn max_binding(&self) -> u64 {
        let adapter = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        self.opts.max_binding_bytes.map_or(adapter, |m| m.min(adapter)).max(4)
    }

    /// The memory budget and the rule it came from.
    fn memory_limit(&self) -> (Option<u64>, &'static str) {
        if let Some(m) = self.opts.memory_limit {
            return (Some(m), "the limit set by the caller");
        }
        if self.is_cpu() {
            return (host_mem_available(), "a CPU adapter: the host's available memory");
        }
        (None, "no memory query: buffer creation decides")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux).
fn host_mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Rows `row_start..row_start + rows` of a matrix, in buffers the kernel binds.
struct Part {
    rows: u32,
    bind: wgpu::BindGroup,
}

/// One uploaded matrix.
struct GpuWeight {
    q4: bool,
    rows: usize,
    kb: usize,
    parts: Vec<Part>,
}

/// Bytes of the GPU copy of one row of `kb` blocks: (scales, quants).
fn row_bytes(q4: bool, kb: usize) -> (u64, u64) {
    if q4 {
        (kb as u64 * 8, kb as u64 * 16)
    } else {
        (kb as u64 * 4, kb as u64 * 32)
    }
}

/// Rows `rows` of a matrix of `kb` blocks per row in the layout the kernels read, each
/// array interleaved across the rows (element e of row r at `e * rows.len() + r`): f32
/// scales (q4: all scales, then all minimums) and the quants as little-endian u32 words
/// (4 i8, or 8 nibbles).
fn repack(w: &Weight<'_>, rows: core::ops::Range<usize>, kb: usize) -> Option<(Vec<f32>, Vec<u32>)> {
    let n = rows.len();
    let interleave = |per_row: usize, get: &dyn Fn(usize, usize) -> u32| -> Vec<u32> {
        let mut v = vec![0u32; per_row * n];
        for (r, row) in rows.clone().enumerate() {
            for e in 0..per_row {
                v[e * n + r] = get(row, e);
            }
        }
        v
    };
    let word = |q: &[u8], i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (scales, qs) = match *w {
        Weight::Q8(b) => (
            interleave(kb, &|row, j| b[row * kb + j].scale().to_bits()),
            interleave(8 * kb, &|row, e| word(bytemuck::cast_slice(&b[row * kb + e / 8].qs), e % 8)),
        ),
        Weight::Q4(b) => {
            let dm = |blk: &BlockQ4, e: usize| if e < kb { blk.scale() } else { blk.min() };
            (
                interleave(2 * kb, &|row, e| dm(&b[row * kb + e % kb], e).to_bits()),
                interleave(4 * kb, &|row, e| word(&b[row * kb + e / 4].qs, e % 4)),
            )
        }
        Weight::F32(_) => return None,
    };
    Some((scales.into_iter().map(f32::from_bits).collect(), qs))
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// The address of a weight's data: how a call names the matrix it wants.
fn key(w: &Weight<'_>) -> usize {
    match *w {
        Weight::Q8(b) => b.as_ptr() as usize,
        Weight::Q4(b) => b.as_ptr() as usize,
        Weight::F32(b) => b.as_ptr() as usize,
    }
}

/// How one matrix is uploaded.
#[derive(Clone, Copy)]
struct Plan {
    key: usize,
    q4: bool,
    kb: usize,
    /// Rows per buffer: the binding limit over the bytes of one row.
    per_part: usize,
}

/// Most products in one [`Offload::matmul`] call (q, k, v).
const MAX_JOBS: usize = 3;

/// One model's matrices on the GPU and the buffers of a call: quantized activations in,
/// products out.
pub struct GpuMatmul {
    dev: GpuDevice,
    weights: HashMap<usize, GpuWeight>,
    max_tokens: usize,
    max_kb: usize,
    x_scale: wgpu::Buffer,
    x_qs: wgpu::Buffer,
    out: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Byte stride between the outputs of a call's products.
    out_slot: u64,
    busy: Cell<Duration>,
    calls: Cell<u64>,
}

impl GpuMatmul {
    /// Uploads the matrices of `model` for calls of up to `max_tokens` tokens (the
    /// session's `batch`). Fails before uploading when they do not fit.
    pub fn for_model(dev: GpuDevice, model: &Model<'_>, max_tokens: usize) -> Result<Self, GpuError> {
        let ws: Vec<_> = model.matrices().collect();
        Self::new(dev, &ws, max_tokens)
    }

    /// Uploads `(weight, rows, cols)` matrices (q8 or q4) for calls of up to `max_tokens`.
    pub fn new(dev: GpuDevice, ws: &[(Weight<'_>, usize, usize)], max_tokens: usize) -> Result<Self, GpuError> {
        let name = dev.info.name.clone();
        let unsupported = |what: String| GpuError::Unsupported { adapter: name.clone(), what };
        if ws.iter().any(|(w, _, _)| matches!(w, Weight::F32(_))) {
            return Err(unsupported("the GPU path runs q8 and q4 matrices; this model's are f32".into()));
        }
        let max_tokens = max_tokens.max(1);
        let max_binding = dev.max_binding();
        let align = dev.limits.min_storage_buffer_offset_alignment.max(4) as u64;

        // Plan: parts per matrix and the bytes of every buffer, before creating any. A
        // tied head is the embedding: uploaded once.
        let mut plans: Vec<Option<Plan>> = Vec::with_capacity(ws.len());
        let mut need = 0u64;
        let (mut max_kb, mut max_rows) = (0usize, 0usize);
        for &(ref w, rows, cols) in ws {
            let k = key(w);
            if plans.iter().flatten().any(|p| p.key == k) {
                plans.push(None);
                continue;
            }
            let q4 = matches!(w, Weight::Q4(_));
            let kb = cols / QK8;
            let (sb, qb) = row_bytes(q4, kb);
            let per_part = (max_binding / qb.max(1)).min(u64::from(u16::MAX) * dev.workgroup as u64);
            if per_part == 0 {
                return Err(unsupported(format!(
                    "one matrix row needs {qb} bytes, over the {max_binding}-byte storage binding limit"
                )));
            }
            let per_part = per_part as usize;
            need += rows as u64 * (sb + qb) + rows.div_ceil(per_part) as u64 * 256;
            plans.push(Some(Plan { key: k, q4, kb, per_part }));
            max_kb = max_kb.max(kb);
            max_rows = max_rows.max(rows);
        }
        let out_slot = (max_tokens as u64 * max_rows as u64 * 4).next_multiple_of(align);
        let x_bytes = (max_tokens * max_kb) as u64 * 4;
        if out_slot > max_binding || x_bytes * 8 > max_binding {
            return Err(unsupported(format!(
                "{max_tokens} tokens of {max_rows} outputs exceed the {max_binding}-byte storage binding limit"
            )));
        }
        need += x_bytes * 9 + 2 * MAX_JOBS as u64 * out_slot;
        let (limit, rule) = dev.memory_limit();
        if let Some(have) = limit.filter(|&have| need > have) {
            return Err(GpuError::OutOfMemory { adapter: name, need, have: Some(have), rule });
        }

        let d = &dev.device;
        let scope = d.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = |label: &str, size: u64, usage| {
            d.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
        };
        use wgpu::BufferUsages as U;
        let x_scale = buffer("x_scale", x_bytes, U::STORAGE | U::COPY_DST);
        let x_qs = buffer("x_qs", x_bytes * 8, U::STORAGE | U::COPY_DST);
        let out = buffer("out", MAX_JOBS as u64 * out_slot, U::STORAGE | U::COPY_SRC);
        let staging = buffer("staging", MAX_JOBS as u64 * out_slot, U::MAP_READ | U::COPY_DST);
        let mut weights = HashMap::new();
        for (&(ref w, rows, _), plan) in ws.iter().zip(&plans) {
            let Some(Plan { key: k, q4, kb, per_part }) = *plan else { continue };
            let mut parts = Vec::new();
            for start in (0..rows).step_by(per_part) {
                let n = per_part.min(rows - start);
                let init = |label: &str, contents: &[u8], usage| {
                    d.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents, usage })
                };
                // rows, kb, row_start, total_rows, zero, padding to 32 bytes.
                let params = [n as u32, kb as u32, start as u32, rows as u32, 0, 0, 0, 0];
                let uniform = init("part", bytemuck::cast_slice(&params), U::UNIFORM);
                let (scales, qs) = repack(w, start..start + n, kb).ok_or_else(|| unsupported("f32 matrix".into()))?;
                let s = init("w_scale", bytemuck::cast_slice(&scales), U::STORAGE);
                let q = init("w_qs", bytemuck::cast_slice(&qs), U::STORAGE);
                let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("part"),
                    layout: &dev.layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: s.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 2, resource: q.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 3, resource: x_scale.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 4, resource: x_qs.as_entire_binding() },
                        wgpu::BindGroupEntry {
                            binding: 5,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &out,
                                offset: 0,
                                size: wgpu::BufferSize::new(out_slot),
                            }),
                        },
                    ],
                });
                parts.push(Part { rows: n as u32, bind });
            }
            weights.insert(k, GpuWeight { q4, rows, kb, parts });
        }
        if pollster::block_on(scope.pop()).is_some() {
            let (have, _) = dev.memory_limit();
            return Err(GpuError::OutOfMemory { adapter: name, need, have, rule: "buffer creation ran out of memory" });
        }
        Ok(GpuMatmul {
            dev,
            weights,
            max_tokens,
            max_kb,
            x_scale,
            x_qs,
            out,
            staging,
            out_slot,
            busy: Cell::new(Duration::ZERO),
            calls: Cell::new(0),
        })
    }

    pub fn device(&self) -> &GpuDevice {
        &self.dev
    }

    /// Buffers per matrix (more than one where a matrix was split), in upload order.
    pub fn parts(&self, w: &Weight<'_>) -> Option<usize> {
        self.weights.get(&key(w)).map(|g| g.parts.len())
    }

    /// Calls served and the wall time spent in them (upload, kernels, read-back).
    pub fn stats(&self) -> (u64, Duration) {
        (self.calls.get(), self.busy.get())
    }

    /// `out (n, rows) = x · wᵀ` for each job, `xq` holding the `n` quantized activation
    /// rows: one submission and one read-back for all jobs.
    pub fn run(&self, xq: &[BlockQ8], n: usize, jobs: &mut [(&Weight<'_>, usize, &mut [f32])]) -> Result<(), GpuError> {
        let t0 = Instant::now();
        if jobs.is_empty() {
            return Ok(());
        }
        if n == 0 || n > self.max_tokens || jobs.len() > MAX_JOBS {
            return Err(self.dev.err(format!("a call of {n} tokens and {} products is over the plan", jobs.len())));
        }
        let mut kb = 0;
        let mut gws = Vec::with_capacity(jobs.len());
        for (w, rows, out) in jobs.iter() {
            let g = self.weights.get(&key(w)).ok_or_else(|| self.dev.err("a matrix that was not uploaded"))?;
            if g.rows != *rows || out.len() != n * rows || (kb != 0 && kb != g.kb) {
                return Err(self.dev.err("a product whose shape does not match its matrix"));
            }
            kb = g.kb;
            gws.push(g);
        }
        if xq.len() != n * kb || kb > self.max_kb {
            return Err(self.dev.err("activations whose length does not match the matrix"));
        }
        let scales: Vec<f32> = xq.iter().map(BlockQ8::scale).collect();
        let qs: Vec<u32> = xq.iter().flat_map(|b| words(bytemuck::cast_slice(&b.qs))).collect();
        let queue = &self.dev.queue;
        queue.write_buffer(&self.x_scale, 0, bytemuck::cast_slice(&scales));
        queue.write_buffer(&self.x_qs, 0, bytemuck::cast_slice(&qs));

        let mut enc = self.dev.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (j, g) in gws.iter().enumerate() {
                pass.set_pipeline(if g.q4 { &self.dev.q4 } else { &self.dev.q8 });
                for p in &g.parts {
                    pass.set_bind_group(0, &p.bind, &[(j as u64 * self.out_slot) as u32]);
                    pass.dispatch_workgroups(p.rows.div_ceil(self.dev.workgroup), n as u32, 1);
                }
            }
        }
        for (j, (_, rows, _)) in jobs.iter().enumerate() {
            let at = j as u64 * self.out_slot;
            enc.copy_buffer_to_buffer(&self.out, at, &self.staging, at, (n * rows * 4) as u64);
        }
        queue.submit([enc.finish()]);
        let (last, (_, last_rows, _)) = (jobs.len() - 1, &jobs[jobs.len() - 1]);
        let end = last as u64 * self.out_slot + (n * last_rows * 4) as u64;
        let slice = self.staging.slice(..end);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.dev.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| self.dev.err(format!("poll: {e}")))?;
        match rx.recv() {
            Ok(Ok(())) => {}
            _ => return Err(self.dev.err("reading the products back failed")),
        }
        {
            let view = slice.get_mapped_range().map_err(|e| self.dev.err(format!("mapping: {e}")))?;
            for (j, (_, rows, out)) in jobs.iter_mut().enumerate() {
                let at = j * self.out_slot as usize;
                out.copy_from_slice(bytemuck::cast_slice(&view[at..at + n * *rows * 4]));
            }
        }
        self.staging.unmap();
        self.calls.set(self.calls.get() + 1);
        self.busy.set(self.busy.get() + t0.elapsed());
        Ok(())
    }
}

impl Offload for GpuMatmul {
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn matmul(&self, xq: &[BlockQ8], n: usize, jobs: &mut [(&Weight<'_>, usize, &mut [f32])]) -> Result<(), Error> {
        self.run(xq, n, jobs).map_err(|_| Error::Offload("a matrix product failed on the device"))
    }
}

#[cfg(test)]
mod tests;
