//! `setblock.json` parsing and validation with arbitrary text: an error or a manifest, never a
//! panic; a manifest that passes has sizes inside the bounds the loader allocates from.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use setblock::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(text, Path::new("setblock.json")) {
        assert!(m.num_layers >= 1 && m.num_layers <= 1024);
        assert!((m.mask_token_id as usize) < m.vocab_size);
        assert!(m.block_sizes.min >= 1 && m.block_sizes.min <= m.block_sizes.max);
        assert!(m.gamma.low.is_finite() && m.gamma.low >= 0.0);
        let _ = m.kv_bytes_per_token();
        let _ = m.block_size();
    }
});
