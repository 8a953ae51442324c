//! Owned or mapped model bytes with the 64-byte alignment the `.arq` reader requires.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use arq::aligned::AlignedBytes;

/// The bytes of an `.arq` file: a read-only mmap (page aligned) or an aligned heap copy.
pub enum ModelBytes {
    Mapped(memmap2::Mmap),
    Owned(AlignedBytes),
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
        ModelBytes::Owned(AlignedBytes::copy_of(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Owned(a) => a.bytes(),
        }
    }
}
