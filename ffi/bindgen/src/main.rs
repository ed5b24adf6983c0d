//! `uniffi-bindgen`, pinned to the exact UniFFI release that `sotto-ffi` is
//! built with. Bindings are generated in library mode from the unstripped
//! cdylib that cargo builds, e.g.
//! `cargo run -p sotto-uniffi-bindgen -- generate --library
//! $CARGO_TARGET_DIR/debug/libsotto_ffi.so --language kotlin --out-dir out`
//! (see `scripts/gen-bindings`). Shipping it as a workspace binary means the
//! generator can never drift from the scaffolding compiled into the library.

fn main() {
    uniffi::uniffi_bindgen_main()
}
