//! The stable replay of the fuzz targets' inputs: a crate's `fuzz_checks` tests feed
//! every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` to the
//! target's check function, so a crash the fuzzer found stays fixed under plain
//! `cargo test`. (`warden-policy`, which does not depend on this crate, keeps its own.)

use std::path::Path;

/// Feeds every corpus and regression file of `target` to `check`; `workspace` is the
/// workspace root (`concat!(env!("CARGO_MANIFEST_DIR"), "/..")` in a member crate).
/// Panics when the target has no input at all.
pub fn replay_fuzz_corpus(workspace: &Path, target: &str, check: fn(&[u8])) {
    let fuzz = workspace.join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("replaying {}", path.display());
            check(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target}");
}
