//! Writes random models into a directory, as `<name>.gguf`: `testing::reference_specs()`'s
//! tiny ones, for `scripts/llama-reference` to run through llama.cpp, or with `--shaped`
//! `testing::shaped_specs()`'s, with the real models' shapes, for `scripts/bench-gpu` to
//! time on a machine that has no copy of the real files.
//!
//! ```text
//! cargo run -p attrinet-compute --example write-tiny -- [--shaped] DIR
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let shaped = args.first().is_some_and(|a| a == "--shaped");
    if shaped {
        args.remove(0);
    }
    let [dir] = &args[..] else {
        eprintln!("usage: write-tiny [--shaped] DIR");
        return ExitCode::from(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let specs =
        if shaped { attrinet_compute::testing::shaped_specs() } else { attrinet_compute::testing::reference_specs() };
    for (name, spec) in specs {
        let path = dir.join(format!("{name}.gguf"));
        if let Err(e) = attrinet_compute::testing::write_random_llama(&path, &spec) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}
