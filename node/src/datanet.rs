//! Datanets on disk: building one from a directory of text files, and saving and loading
//! its index. attrinet-market keeps the index itself pure (no I/O); this is the thin layer
//! the CLI (`attrinet datanet build`) and watchers use.
//!
//! Directory layout: one subdirectory per contributor, named by its EVM address
//! (`0x` and 40 hex digits, any case); every file below it, at any depth, is one UTF-8 text
//! contribution owned by that address. Files and directories whose names start with `.`
//! are skipped. Contributions are ordered by their path relative to the directory (byte
//! order, `/`-separated), so the same directory always gives the same commitment.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use alloy_primitives::Address;
use attrinet_market::{AttributionError, Datanet, Document};

/// A datanet could not be read, built or saved. Every variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum DatanetError {
    /// A file or directory could not be read or written.
    #[error("datanet {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The directory is not laid out as the module says; `reason` says what to change.
    #[error("datanet {}: {reason}", .path.display())]
    Layout {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// The contributions do not make a datanet, or the index file is not one.
    #[error("datanet {}: {source}", .path.display())]
    Index {
        /// The directory or index file.
        path: PathBuf,
        /// The index's own error.
        #[source]
        source: AttributionError,
    },
}

/// `Result` with [`DatanetError`].
pub type Result<T, E = DatanetError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatanetError + '_ {
    move |source| DatanetError::Io { path: path.to_path_buf(), source }
}

fn layout(path: &Path, reason: impl Into<String>) -> DatanetError {
    DatanetError::Layout { path: path.to_path_buf(), reason: reason.into() }
}

fn index(path: &Path) -> impl FnOnce(AttributionError) -> DatanetError + '_ {
    move |source| DatanetError::Index { path: path.to_path_buf(), source }
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Every non-hidden file below `dir`, recursively.
fn files_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if hidden(&path) {
            continue;
        }
        let kind = std::fs::metadata(&path).map_err(io(&path))?;
        if kind.is_dir() {
            files_below(&path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The contributions under `dir` (see the module's layout), in commitment order.
pub fn read_datanet_dir(dir: &Path) -> Result<Vec<Document>> {
    let mut owners = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if hidden(&path) {
            continue;
        }
        if !path.is_dir() {
            return Err(layout(
                &path,
                "files must be inside a directory named by their owner's address, e.g. DIR/0xAbC…/notes.txt",
            ));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let owner = Address::from_str(name)
            .map_err(|_| layout(&path, format!("{name:?} is not an EVM address (0x and 40 hex digits)")))?;
        owners.push((owner, path));
    }
    let mut documents = Vec::new();
    for (owner, owner_dir) in owners {
        let mut files = Vec::new();
        files_below(&owner_dir, &mut files)?;
        for file in files {
            let relative = file.strip_prefix(dir).expect("below dir");
            let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                layout(
                    &file,
                    format!(
                        "not UTF-8 text (invalid byte at offset {}); convert it or remove it",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?;
            documents.push(Document { owner, name, text });
        }
    }
    documents.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(documents)
}

/// Reads `dir`, tokenizes every contribution with `tokenize` (the model's tokenizer) and
/// indexes them with spans of at least `min_span` tokens. Logs what it read and how long
/// indexing took (a 10 MB datanet takes about half a second: `docs/benchmarks.md`).
pub fn build_datanet_dir(dir: &Path, min_span: u32, tokenize: impl Fn(&str) -> Vec<u32>) -> Result<Datanet> {
    let documents = read_datanet_dir(dir)?;
    let bytes: usize = documents.iter().map(|d| d.text.len()).sum();
    tracing::info!(target: "node::datanet", dir = %dir.display(), files = documents.len(), bytes, "tokenizing contributions");
    let start = Instant::now();
    let datanet = Datanet::from_texts(min_span, documents, tokenize).map_err(index(dir))?;
    tracing::info!(
        target: "node::datanet",
        root = %datanet.root(),
        tokens = datanet.token_count(),
        contributors = datanet.contributors().len(),
        secs = start.elapsed().as_secs_f64(),
        "datanet indexed"
    );
    Ok(datanet)
}

/// Saves the index to `path` atomically (write, fsync, rename): a crash leaves the old
/// file or the new one.
pub fn save_datanet(datanet: &Datanet, path: &Path) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&datanet.to_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Loads an index saved by [`save_datanet`], verifying it (see `Datanet::from_bytes`).
pub fn load_datanet(path: &Path) -> Result<Datanet> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Datanet::from_bytes(&bytes).map_err(index(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| w.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)) >> 1))
            .collect()
    }

    #[test]
    fn a_directory_builds_saves_and_loads_to_the_same_datanet() {
        let dir = tempfile::tempdir().unwrap();
        let alice = "0x00000000000000000000000000000000000000a1";
        let bob = "0x00000000000000000000000000000000000000B0";
        std::fs::create_dir_all(dir.path().join(alice).join("notes")).unwrap();
        std::fs::create_dir_all(dir.path().join(bob)).unwrap();
        std::fs::write(dir.path().join(alice).join("notes/b.txt"), "one two three four five").unwrap();
        std::fs::write(dir.path().join(alice).join("a.txt"), "six seven eight nine ten").unwrap();
        std::fs::write(dir.path().join(bob).join("x.txt"), "eleven twelve thirteen fourteen").unwrap();
        std::fs::write(dir.path().join(bob).join(".hidden"), "not a contribution").unwrap();

        let docs = read_datanet_dir(dir.path()).unwrap();
        let names: Vec<_> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "0x00000000000000000000000000000000000000B0/x.txt",
                "0x00000000000000000000000000000000000000a1/a.txt",
                "0x00000000000000000000000000000000000000a1/notes/b.txt",
            ]
        );
        let datanet = build_datanet_dir(dir.path(), 2, words).unwrap();
        assert_eq!(datanet.contribution_count(), 3);
        let a = datanet.attribute(&words("x seven eight nine y"));
        assert_eq!(a.weights.ppm_of(&Address::from_str(alice).unwrap()), 1_000_000);

        let file = dir.path().join("datanet.idx");
        save_datanet(&datanet, &file).unwrap();
        assert_eq!(load_datanet(&file).unwrap(), datanet);
        // A corrupt file is refused with its path in the message.
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 3);
        std::fs::write(&file, bytes).unwrap();
        let e = load_datanet(&file).unwrap_err().to_string();
        assert!(e.contains("datanet.idx"), "{e}");
    }

    #[test]
    fn stray_files_and_bad_owner_names_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loose.txt"), "no owner").unwrap();
        let e = read_datanet_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("owner's address"), "{e}");
        std::fs::remove_file(dir.path().join("loose.txt")).unwrap();
        std::fs::create_dir(dir.path().join("alice")).unwrap();
        let e = read_datanet_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not an EVM address"), "{e}");
    }
}
