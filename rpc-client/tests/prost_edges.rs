//! ARCHITECTURE.md's invariant on prost types, checked: in the frontend,
//! the coordinator and the OSD, wire types (`pb::`, `prost::`) appear only
//! in the `grpc.rs` edges; every outbound call goes through this crate.

use std::path::{Path, PathBuf};

/// The service crates whose sources must stay prost-free outside `grpc.rs`.
const SERVICE_SOURCES: [&str; 3] = ["frontend/src", "coordinator/src", "osd/src"];
/// What marks a wire type.
const WIRE_MARKERS: [&str; 2] = ["pb::", "prost::"];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn services_touch_prost_types_only_in_their_grpc_edges() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    for dir in SERVICE_SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {} source files under {SERVICE_SOURCES:?}", files.len());
    let mut offending = Vec::new();
    for file in files.iter().filter(|f| f.file_name().is_some_and(|name| name != "grpc.rs")) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (number, line) in text.lines().enumerate() {
            if WIRE_MARKERS.iter().any(|marker| line.contains(marker)) {
                let shown = file.strip_prefix(root).unwrap_or(file).display();
                offending.push(format!("{shown}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "prost types outside the grpc.rs edges (go through pocket-rpc-client, ADR 17):\n{}",
        offending.join("\n")
    );
}
