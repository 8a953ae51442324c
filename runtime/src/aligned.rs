//! A 64-byte aligned copy of a byte buffer (`alloc`): the `.arq` reader casts tensors in
//! place and so needs an aligned base, which a `Vec<u8>` does not promise. For files read
//! into memory (tests, build scripts, the converter's heap copies); an mmap is already
//! page aligned.

use alloc::vec;
use alloc::vec::Vec;

use crate::format::ALIGN;

/// An owned copy of some bytes, starting at a 64-byte aligned address.
pub struct AlignedBytes {
    words: Vec<u64>,
    skip: usize,
    len: usize,
}

impl AlignedBytes {
    pub fn copy_of(bytes: &[u8]) -> Self {
        // `Vec<u64>` is 8-aligned; over-allocate by 64 bytes and start at the first
        // 64-aligned byte.
        let mut words = vec![0u64; bytes.len().div_ceil(8) + ALIGN / 8];
        let skip = (ALIGN - words.as_ptr() as usize % ALIGN) % ALIGN;
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        all[skip..skip + bytes.len()].copy_from_slice(bytes);
        AlignedBytes { words, skip, len: bytes.len() }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[self.skip..self.skip + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_aligned_and_equal() {
        for len in [0, 1, 63, 64, 65, 1000] {
            let src: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let a = AlignedBytes::copy_of(&src);
            assert_eq!(a.bytes(), &src[..]);
            assert_eq!(a.bytes().as_ptr() as usize % ALIGN, 0);
        }
    }
}
