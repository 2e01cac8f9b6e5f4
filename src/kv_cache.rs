//! The exact KV cache: preallocated once, append-only.
//!
//! Two layouts, as the model folder's `kv_layout` says:
//! - sequence-major (`sequence-major[-packed]`): per layer `[max_context, kv_heads, head_dim]`
//!   float32 for keys and values, so the first `len` positions are one contiguous slice that is
//!   handed to ONNX Runtime as the past without a copy; the runtime copies in the clean rows of
//!   each forward's presents.
//! - head-major (`head-major-shared`, `export --fused-attention`): per layer
//!   `[kv_heads, max_context, head_dim]`, the whole buffer bound as both the past and the present
//!   of the graph's `GroupQueryAttention`, which writes each forward's K/V in place at positions
//!   `len..`; committing is only counting.
//!
//! Only clean tokens are ever committed: a block slot's K/V, written past `len` by a head-major
//! graph, is never counted and is overwritten by the next forward.

/// How a cache holds a layer's positions (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// `[capacity, kv_heads, head_dim]`: the committed positions are one prefix.
    SequenceMajor,
    /// `[kv_heads, capacity, head_dim]`: each head's committed positions are a prefix of its rows.
    HeadMajor,
}

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
    kv_heads: usize,
    layout: KvLayout,
}

impl KvCache {
    /// Allocate `capacity` positions for `layers` layers of `kv_heads * head_dim` floats,
    /// sequence-major; `None` when the sizes overflow or the memory cannot be had (never an abort).
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Option<Self> {
        Self::with_layout(
            layers,
            kv_heads,
            head_dim,
            capacity,
            KvLayout::SequenceMajor,
        )
    }

    /// [`KvCache::new`] in the given layout.
    pub fn with_layout(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        layout: KvLayout,
    ) -> Option<Self> {
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
            kv_heads,
            layout,
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

    /// How the positions are laid out.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// The committed keys of `layer`: `[len, kv_heads, head_dim]` (sequence-major; a head-major
    /// cache's committed keys are [`KvCache::committed`]'s runs).
    pub(crate) fn past_keys(&self, layer: usize) -> &[f32] {
        debug_assert_eq!(self.layout, KvLayout::SequenceMajor);
        &self.keys[layer][..self.len * self.row]
    }

    /// The committed values of `layer` (as [`KvCache::past_keys`]).
    pub(crate) fn past_values(&self, layer: usize) -> &[f32] {
        debug_assert_eq!(self.layout, KvLayout::SequenceMajor);
        &self.values[layer][..self.len * self.row]
    }

    /// The committed keys (`values` false) or values of `layer` as contiguous runs: one run
    /// sequence-major, one per head head-major.
    pub fn committed(&self, layer: usize, values: bool) -> impl Iterator<Item = &[f32]> {
        let buf = if values {
            &self.values[layer]
        } else {
            &self.keys[layer]
        };
        let (runs, stride, run) = match self.layout {
            KvLayout::SequenceMajor => (1, 0, self.len * self.row),
            KvLayout::HeadMajor => {
                let head_dim = self.row / self.kv_heads.max(1);
                (self.kv_heads, self.capacity * head_dim, self.len * head_dim)
            }
        };
        (0..runs).map(move |h| &buf[h * stride..h * stride + run])
    }

    /// The addresses of every layer's key then value buffer (they never move: allocated once).
    pub(crate) fn buffer_addresses(&self) -> impl Iterator<Item = usize> + '_ {
        self.keys
            .iter()
            .zip(&self.values)
            .flat_map(|(k, v)| [k.as_ptr() as usize, v.as_ptr() as usize])
    }

    /// The whole key and value buffers of `layer`, written in place by a head-major graph.
    pub(crate) fn buffers_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.keys[layer], &mut self.values[layer])
    }

    /// Largest absolute difference between the committed K/V of two caches of the same model
    /// (for checks that two ways of filling a cache agree); `f32::INFINITY` when their lengths or
    /// layouts differ.
    pub fn max_abs_diff(&self, other: &KvCache) -> f32 {
        if self.len != other.len
            || self.row != other.row
            || self.keys.len() != other.keys.len()
            || self.layout != other.layout
        {
            return f32::INFINITY;
        }
        (0..self.keys.len())
            .flat_map(|l| {
                [false, true]
                    .into_iter()
                    .flat_map(move |v| self.committed(l, v).zip(other.committed(l, v)))
            })
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max)
    }

    /// Append the first `n` positions of this forward's presents (`[seq, kv_heads, head_dim]`).
    /// The caller commits each layer, then calls [`KvCache::advance`] once.
    pub(crate) fn write(&mut self, layer: usize, keys: &[f32], values: &[f32], n: usize) {
        debug_assert_eq!(self.layout, KvLayout::SequenceMajor);
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

    #[test]
    fn head_major_runs_are_each_heads_committed_prefix() {
        let (kvh, hd, cap) = (2, 3, 4);
        let mut c = KvCache::with_layout(1, kvh, hd, cap, KvLayout::HeadMajor).unwrap();
        let (k, _) = c.buffers_mut(0);
        for (i, x) in k.iter_mut().enumerate() {
            *x = i as f32;
        }
        c.advance(2);
        let runs: Vec<Vec<f32>> = c.committed(0, false).map(<[f32]>::to_vec).collect();
        // head h's positions 0..2 start at h * cap * hd
        assert_eq!(
            runs,
            vec![
                vec![0., 1., 2., 3., 4., 5.],
                vec![12., 13., 14., 15., 16., 17.]
            ]
        );
        let mut other = KvCache::with_layout(1, kvh, hd, cap, KvLayout::HeadMajor).unwrap();
        other.advance(2);
        assert_eq!(c.max_abs_diff(&other), 17.0);
        let seq = KvCache::new(1, kvh, hd, cap).unwrap();
        assert_eq!(c.max_abs_diff(&seq), f32::INFINITY);
    }
}
