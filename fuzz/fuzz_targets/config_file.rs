//! Feeds arbitrary text to loglogd's config file path, exactly as `main`
//! runs it (`loglogd --config FILE`: TOML parse, every setting parsed and
//! applied, the node's validation), by compiling `src/main.rs` of loglogd
//! as a module. What is accepted is printed as `--print-config` does; that
//! printout must load again to the same configuration (it is documented as
//! a valid config file).
#![no_main]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unexpected_cfgs)]
#[path = "../../crates/loglogd/src/main.rs"]
mod loglogd_main;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("loglog-fuzz-config-")
            .tempdir_in(base)
            .expect("a scratch directory")
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("fuzzed.toml");
    fs::write(&path, data).expect("write the fuzzed file");
    let Ok(printed) = loglogd_main::fuzzing::load_config_file(&path) else {
        return;
    };
    let again = scratch().join("printed.toml");
    fs::write(&again, &printed).expect("write the printed file");
    let reprinted = loglogd_main::fuzzing::load_config_file(&again)
        .unwrap_or_else(|error| panic!("--print-config output does not load: {error}\n{printed}"));
    assert_eq!(reprinted, printed);
});
