//! Carving typed, 64-byte aligned buffers out of one caller-supplied byte arena.
//!
//! The same [`Layout`] arithmetic sizes the arena (`memory_plan`) and carves it
//! (`Session::new`), so the planned size is exact by construction.

use crate::error::Error;

pub const ALIGN: usize = 64;

/// Sizes a sequence of buffers, each padded to 64 bytes. Start with [`Layout::new`],
/// which reserves `ALIGN - 1` bytes so any arena base address can be aligned.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    bytes: usize,
}

impl Layout {
    pub fn new() -> Self {
        Layout { bytes: ALIGN - 1 }
    }
    /// Adds `n` elements of `T`; `None` on overflow.
    pub fn then<T>(self, n: usize) -> Option<Self> {
        let b = n.checked_mul(core::mem::size_of::<T>())?;
        let padded = b.checked_add(ALIGN - 1)? / ALIGN * ALIGN;
        Some(Layout { bytes: self.bytes.checked_add(padded)? })
    }
    pub fn bytes(self) -> usize {
        self.bytes
    }
}

/// Hands out consecutive aligned buffers from an arena.
pub struct Arena<'a> {
    rest: &'a mut [u8],
}

impl<'a> Arena<'a> {
    /// Wraps `bytes` after checking it holds `need` bytes (from the same [`Layout`]).
    pub fn new(bytes: &'a mut [u8], need: usize) -> Result<Self, Error> {
        if bytes.len() < need {
            return Err(Error::ArenaTooSmall { need, have: bytes.len() });
        }
        let skip = bytes.as_ptr().align_offset(ALIGN).min(ALIGN - 1);
        let (_, rest) = bytes.split_at_mut(skip);
        Ok(Arena { rest })
    }

    /// The next buffer of `n` `T`s. The caller sized the arena with the same sequence of
    /// [`Layout::then`] calls, so this cannot run out. The buffer keeps whatever bytes
    /// the arena held (every `T` here is plain data, and the engine writes each element
    /// before reading it): not zeroing keeps untouched KV-cache pages of a large,
    /// lazily-zeroed host allocation out of the resident set.
    pub fn take<T: bytemuck::Pod>(&mut self, n: usize) -> Result<&'a mut [T], Error> {
        let b = n * core::mem::size_of::<T>();
        let padded = b.div_ceil(ALIGN) * ALIGN;
        let rest = core::mem::take(&mut self.rest);
        if rest.len() < padded {
            return Err(Error::ArenaTooSmall { need: padded, have: rest.len() });
        }
        let (head, tail) = rest.split_at_mut(padded);
        self.rest = tail;
        bytemuck::try_cast_slice_mut(&mut head[..b]).map_err(|_| Error::BadConfig("arena alignment"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_size_is_enough_at_every_base_offset() {
        let plan = Layout::new().then::<f32>(10).unwrap().then::<u8>(3).unwrap().then::<f32>(64).unwrap();
        let mut backing = [0u8; 1024];
        for off in 0..64 {
            let arena = &mut backing[off..off + plan.bytes()];
            let mut a = Arena::new(arena, plan.bytes()).unwrap();
            assert_eq!(a.take::<f32>(10).unwrap().len(), 10);
            assert_eq!(a.take::<u8>(3).unwrap().len(), 3);
            let last = a.take::<f32>(64).unwrap();
            assert_eq!(last.as_ptr() as usize % ALIGN, 0);
        }
    }

    #[test]
    fn too_small_reports_need_and_have() {
        let mut b = [0u8; 10];
        assert_eq!(Arena::new(&mut b, 100).err(), Some(Error::ArenaTooSmall { need: 100, have: 10 }));
    }
}
