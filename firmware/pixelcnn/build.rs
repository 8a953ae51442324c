//! Build-time facts the firmware embeds, computed on the host from the same files:
//!
//! - `plan.rs`: `ARENA_BYTES`, the PixelCNN arena from the runtime's own memory plan
//!   (`PixelCnn::memory_plan` of the cached session), so the static arena is exactly
//!   what the model needs; the firmware checks it again at start-up.
//! - `test_image.bin`: image 0 of `models/pixelcnn/digits_test.npy` (uint8, shape
//!   (447, 8, 8)), the 64 levels the firmware scores.
//! - `memory.x` on the linker's search path (cortex-m-rt's `link.x` includes it).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

// The runtime's own 64-byte aligned buffer (std feature): the reader needs an aligned base.
use arq::aligned::AlignedBytes;
use arq::{PixelCnn, PixelSessionConfig};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let models = manifest.join("../../models/pixelcnn");
    let model_path = models.join("digits17-q8.arq");
    let test_path = models.join("digits_test.npy");
    for p in [&model_path, &test_path, &manifest.join("memory.x")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    // The arena size.
    let bytes = read(&model_path);
    let aligned = AlignedBytes::copy_of(&bytes);
    let model = PixelCnn::load(aligned.bytes())
        .unwrap_or_else(|e| panic!("{}: not a loadable PixelCNN: {e}", model_path.display()));
    let plan = model.memory_plan(&PixelSessionConfig::default()).expect("memory plan");
    let c = model.config();
    fs::write(
        out.join("plan.rs"),
        format!(
            "/// Arena bytes of a cached `PixelSession` of `digits17-q8.arq` (build.rs).\n\
             pub const ARENA_BYTES: usize = {plan};\n\
             /// Model geometry the build saw.\n\
             pub const HEIGHT: usize = {};\npub const WIDTH: usize = {};\npub const LEVELS: usize = {};\n",
            c.height, c.width, c.levels
        ),
    )
    .unwrap();

    // Test image 0.
    let npy = read(&test_path);
    let (shape, data) = npy_u8(&npy).unwrap_or_else(|e| panic!("{}: {e}", test_path.display()));
    let px = c.height * c.width;
    assert!(
        shape.len() == 3 && shape[1] == c.height && shape[2] == c.width && shape[0] >= 1,
        "{}: shape {shape:?}, expected (N, {}, {})",
        test_path.display(),
        c.height,
        c.width
    );
    let image = &data[..px];
    assert!(image.iter().all(|&v| (v as usize) < c.levels), "test image 0 has a level >= {}", c.levels);
    fs::write(out.join("test_image.bin"), image).unwrap();

    fs::copy(manifest.join("memory.x"), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Parses a C-order uint8 `.npy` (format versions 1 to 3): its shape and data.
fn npy_u8(b: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?).map_err(|e| e.to_string())?;
    if !header.contains("'descr': '|u1'") && !header.contains("'descr': '<u1'") {
        return Err(format!("expected uint8 data, header {header}"));
    }
    if !header.contains("'fortran_order': False") {
        return Err("expected C order".into());
    }
    let shape_str = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape {shape_str}")))
        .collect::<Result<_, _>>()?;
    let data = &b[start + hlen..];
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!("{} data bytes for shape {shape:?}", data.len()));
    }
    Ok((shape, data))
}
