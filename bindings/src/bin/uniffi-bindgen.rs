//! uniffi's binding generator, pinned to the crate's uniffi version:
//! `cargo run -p setblock-ffi --features bindgen --bin uniffi-bindgen -- generate --library ...`.
fn main() {
    uniffi::uniffi_bindgen_main()
}
