//! The exact KV cache: preallocated once, append-only, sequence-major.
//!
//! Layout per layer: `[max_context, kv_heads, head_dim]` float32 for keys and values, so the
//! first `len` positions are one contiguous slice that is handed to ONNX Runtime as the past
//! without a copy. Only clean tokens are ever committed (never a block slot's K/V).

/// `n` zeroed floats from the allocator's zeroed memory (pages are not touched until written, as
/// with `vec![0.0; n]`), or `None` when they cannot be had, where `vec!` would abort.
fn zeroed_floats(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).ok()?;
    // SAFETY: the layout's size is non-zero; the pointer is checked for null; all-zero bytes
    // are a valid f32 (0.0); the memory comes from the global allocator with exactly the layout
    // of a Vec<f32> of capacity n, which is what Vec::from_raw_parts requires.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<f32>();
        if p.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(p, n, n))
    }
}

/// Preallocated key/value storage for every layer.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    row: usize,
}

impl KvCache {
    /// Allocate `capacity` positions for `layers` layers of `kv_heads * head_dim` floats; `None`
    /// when the sizes overflow or the memory cannot be had (never an abort).
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Option<Self> {
        let row = kv_heads.checked_mul(head_dim)?;
        let per_layer = capacity.checked_mul(row)?;
        let zeroed = || zeroed_floats(per_layer);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        keys.try_reserve_exact(layers).ok()?;
        values.try_reserve_exact(layers).ok()?;
        for _ in 0..layers {
            keys.push(zeroed()?);
            values.push(zeroed()?);
        }
        Some(KvCache {
            keys,
            values,
            len: 0,
            capacity,
            row,
        })
    }

    /// Positions committed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held (both K and V, all layers).
    pub fn bytes(&self) -> usize {
        2 * self.keys.len() * self.capacity * self.row * std::mem::size_of::<f32>()
    }

    /// The committed keys of `layer`: `[len, kv_heads, head_dim]`.
    pub fn past_keys(&self, layer: usize) -> &[f32] {
        &self.keys[layer][..self.len * self.row]
    }

    /// The committed values of `layer`.
    pub fn past_values(&self, layer: usize) -> &[f32] {
        &self.values[layer][..self.len * self.row]
    }

    /// Largest absolute difference between the committed K/V of two caches of the same model
    /// (for checks that two ways of filling a cache agree); `f32::INFINITY` when their lengths or
    /// layouts differ.
    pub fn max_abs_diff(&self, other: &KvCache) -> f32 {
        if self.len != other.len || self.row != other.row || self.keys.len() != other.keys.len() {
            return f32::INFINITY;
        }
        (0..self.keys.len())
            .flat_map(|l| {
                [
                    (self.past_keys(l), other.past_keys(l)),
                    (self.past_values(l), other.past_values(l)),
                ]
            })
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max)
    }

    /// Append the first `n` positions of this forward's presents (`[seq, kv_heads, head_dim]`).
    /// The caller commits each layer, then calls [`KvCache::advance`] once.
    pub fn write(&mut self, layer: usize, keys: &[f32], values: &[f32], n: usize) {
        let (start, count) = (self.len * self.row, n * self.row);
        self.keys[layer][start..start + count].copy_from_slice(&keys[..count]);
        self.values[layer][start..start + count].copy_from_slice(&values[..count]);
    }

    /// Mark `n` written positions as committed.
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.len + n <= self.capacity,
            "KV cache overflow: checked before decoding"
        );
        self.len += n;
    }

    /// Forget everything from position `len` on (exact: a position's K/V depends only on earlier tokens).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Empty the cache (the memory stays allocated).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Floats per position per layer (`kv_heads * head_dim`).
    pub fn row(&self) -> usize {
        self.row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_overflow_are_none_not_an_abort() {
        assert!(KvCache::new(2, usize::MAX / 2, 4, 1).is_none());
        assert!(KvCache::new(2, 1, 1, usize::MAX).is_none());
        assert!(KvCache::new(2, 1024, 1024, usize::MAX / (1 << 20)).is_none());
        let c = KvCache::new(2, 2, 16, 8).unwrap();
        assert_eq!(c.bytes(), 2 * 2 * 8 * 32 * 4);
        assert!(c.past_keys(1).is_empty());
    }
}
