//! Writes `testing::reference_specs()`'s tiny models into a directory, as `<name>.gguf`, for
//! `scripts/llama-reference` to run through llama.cpp.
//!
//! ```text
//! cargo run -p attrinet-compute --example write-tiny -- DIR
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: write-tiny DIR");
        return ExitCode::from(2);
    };
    for (name, spec) in attrinet_compute::testing::reference_specs() {
        let path = dir.join(format!("{name}.gguf"));
        if let Err(e) = attrinet_compute::testing::write_random_llama(&path, &spec) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}
