//! Compiles every `.proto` file under `proto/` with protox (pure Rust, so no
//! system `protoc` is needed) and generates prost types into `OUT_DIR`.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(&files, [&root])?;
    let mut config = prost_build::Config::new();
    // `bytes` fields as `Vec<u8>`: callers zeroize and move them freely.
    config.compile_fds(descriptors)?;
    Ok(())
}
