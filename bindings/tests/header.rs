//! include/setblock.h is what cbindgen makes of src/c_api.rs; this fails when they drift.
//! Regenerate with `UPDATE_HEADER=1 cargo test -p setblock-ffi --test header`.

use std::path::PathBuf;

#[test]
fn committed_header_matches_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/c_api.rs"))
        .generate()
        .expect("cbindgen parses src/c_api.rs")
        .write(&mut out);
    let generated = String::from_utf8(out).unwrap();
    let path = dir.join("include/setblock.h");
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/setblock.h is stale: run UPDATE_HEADER=1 cargo test -p setblock-ffi --test header"
    );
}
