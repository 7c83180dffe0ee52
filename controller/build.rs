//! Embeds `examples/fleet-repo` in the `muster` binary, so that `muster
//! quickstart` can start a fleet repo wherever the binary was installed.
//!
//! It writes `$OUT_DIR/example_fleet.rs`: one `(relative path, bytes)`
//! entry per regular file, sorted, each included with `include_bytes!` so
//! that the compiler tracks it.

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir.join("../examples/fleet-repo");
    // A directory here makes cargo rerun the script when anything beneath it changes.
    println!("cargo::rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out =
        String::from("/// The example fleet repo: (path relative to its root, content).\n");
    out.push_str("pub(crate) static EXAMPLE_FLEET: &[(&str, &[u8])] = &[\n");
    for (relative, absolute) in &files {
        out.push_str(&format!(
            "    ({relative:?}, include_bytes!({absolute:?})),\n"
        ));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("example_fleet.rs"), out).expect("cannot write example_fleet.rs");
}

/// Regular files beneath `dir`, skipping dot entries, as (relative path
/// with `/`, absolute path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries {
        let entry = entry.expect("cannot read a directory entry");
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().expect("cannot read a file type");
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let relative = path
                .strip_prefix(root)
                .expect("beneath the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let absolute = std::fs::canonicalize(&path).expect("cannot resolve a path");
            files.push((relative, absolute.display().to_string()));
        }
    }
}
