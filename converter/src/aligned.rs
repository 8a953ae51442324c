//! Owned or mapped model bytes with the 64-byte alignment the `.arq` reader requires.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

/// The bytes of an `.arq` file: a read-only mmap (page aligned) or an aligned heap copy.
pub enum ModelBytes {
    Mapped(memmap2::Mmap),
    Owned { buf: Vec<u64>, len: usize },
}

impl ModelBytes {
    /// Maps `path` read-only. The file must not be modified while mapped; arq never
    /// writes an existing `.arq` in place (the converter renames a new file over it).
    pub fn map(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only private mapping; see the doc comment for the aliasing rule.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        Ok(ModelBytes::Mapped(map))
    }

    /// A 64-byte aligned copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        // Vec<u64> is 8-aligned; over-allocate and start at the first 64-aligned byte.
        let mut buf = vec![0u64; bytes.len().div_ceil(8) + 8];
        let skip = Self::skip(&buf);
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[skip..skip + bytes.len()].copy_from_slice(bytes);
        ModelBytes::Owned { buf, len: bytes.len() }
    }

    fn skip(buf: &[u64]) -> usize {
        let base = buf.as_ptr() as usize;
        (64 - base % 64) % 64
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Owned { buf, len } => {
                &bytemuck::cast_slice::<u64, u8>(buf)[Self::skip(buf)..Self::skip(buf) + len]
            }
        }
    }
}
