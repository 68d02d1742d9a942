//! Reading text documents from what a data owner points at: `.txt` files,
//! `.jsonl` files with a `text` field, and directories of them.
//!
//! A `.txt` file is one document whose id is its path.  A `.jsonl` file holds
//! one JSON object per non-blank line; `text` (a string) is required, `id` (a
//! string) is optional and defaults to `<path>:<line>`.  Directories are walked
//! recursively in sorted order, so the same tree always yields the same
//! documents in the same order; inside a directory, files with other
//! extensions are skipped, but a file named explicitly must be `.txt` or
//! `.jsonl`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One document: an id saying where it came from, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Source path, or the `id` field of a `.jsonl` line.
    pub id: String,
    /// The full text, exactly as read.
    pub text: String,
}

/// Why documents could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// A file or directory could not be read.
    /// (The I/O error is part of the message, not a separate cause, so that an
    /// error chain does not print it twice.)
    #[error("cannot read {path}: {error}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A file is not valid UTF-8.
    #[error("{path} is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// The offending file.
        path: PathBuf,
        /// Length of the valid prefix in bytes.
        valid_up_to: usize,
    },
    /// A `.jsonl` line is not a JSON object.
    #[error("{path}:{line}: not a JSON object: {reason}")]
    Json {
        /// The offending file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A `.jsonl` line has no string `text` field.
    #[error("{path}:{line}: missing string field \"text\"")]
    MissingText {
        /// The offending file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
    },
    /// A `.jsonl` line has an `id` field that is not a string.
    #[error("{path}:{line}: field \"id\" must be a string")]
    BadId {
        /// The offending file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
    },
    /// A file named explicitly is neither `.txt` nor `.jsonl`.
    #[error("{path}: unsupported file type (expected .txt, .jsonl or a directory)")]
    Unsupported {
        /// The offending file.
        path: PathBuf,
    },
}

/// The file formats a document can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    JsonLines,
}

impl Format {
    fn of(path: &Path) -> Option<Self> {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("txt") => Some(Self::Text),
            Some("jsonl") => Some(Self::JsonLines),
            _ => None,
        }
    }
}

/// Read every document under `paths`, in order: each path is a `.txt` file,
/// a `.jsonl` file or a directory (walked recursively, sorted by path).
pub fn read_documents(paths: &[impl AsRef<Path>]) -> Result<Vec<Document>, CorpusError> {
    let mut documents = Vec::new();
    for (file, format) in typed_files(paths)? {
        read_file(&file, format, &mut documents)?;
    }
    Ok(documents)
}

/// The files [`read_documents`] reads for `paths`, in the order it reads
/// them (for recording what a run was trained on).
pub fn document_files(paths: &[impl AsRef<Path>]) -> Result<Vec<PathBuf>, CorpusError> {
    Ok(typed_files(paths)?.into_iter().map(|(f, _)| f).collect())
}

fn typed_files(paths: &[impl AsRef<Path>]) -> Result<Vec<(PathBuf, Format)>, CorpusError> {
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let metadata = fs::metadata(path).map_err(|source| io_error(path, source))?;
        if metadata.is_dir() {
            for file in files_under(path)? {
                if let Some(format) = Format::of(&file) {
                    files.push((file, format));
                }
            }
        } else {
            let format = Format::of(path).ok_or_else(|| CorpusError::Unsupported {
                path: path.to_path_buf(),
            })?;
            files.push((path.to_path_buf(), format));
        }
    }
    Ok(files)
}

/// Every file under `directory`, recursively, in sorted path order.
fn files_under(directory: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current).map_err(|source| io_error(&current, source))?;
        for entry in entries {
            let path = entry.map_err(|source| io_error(&current, source))?.path();
            let metadata = fs::metadata(&path).map_err(|source| io_error(&path, source))?;
            if metadata.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path, format: Format, out: &mut Vec<Document>) -> Result<(), CorpusError> {
    let bytes = fs::read(path).map_err(|source| io_error(path, source))?;
    let text = String::from_utf8(bytes).map_err(|error| CorpusError::NotUtf8 {
        path: path.to_path_buf(),
        valid_up_to: error.utf8_error().valid_up_to(),
    })?;
    match format {
        Format::Text => out.push(Document {
            id: path.display().to_string(),
            text,
        }),
        Format::JsonLines => {
            for (index, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    out.push(parse_line(path, index + 1, line)?);
                }
            }
        }
    }
    Ok(())
}

fn parse_line(path: &Path, line: usize, content: &str) -> Result<Document, CorpusError> {
    let json_error = |reason: String| CorpusError::Json {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let value: Value =
        serde_json::from_str(content).map_err(|error| json_error(error.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(json_error("expected an object".to_owned()));
    };
    let Some(Value::String(text)) = object.remove("text") else {
        return Err(CorpusError::MissingText {
            path: path.to_path_buf(),
            line,
        });
    };
    let id = match object.remove("id") {
        None => format!("{}:{line}", path.display()),
        Some(Value::String(id)) => id,
        Some(_) => {
            return Err(CorpusError::BadId {
                path: path.to_path_buf(),
                line,
            });
        }
    };
    Ok(Document { id, text })
}

fn io_error(path: &Path, error: std::io::Error) -> CorpusError {
    CorpusError::Io {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn txt_file_is_one_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.txt", "line one\nline two\n".as_bytes());
        let docs = read_documents(&[&path]).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].text, "line one\nline two\n");
        assert_eq!(docs[0].id, path.display().to_string());
    }

    #[test]
    fn jsonl_gives_one_document_per_line_with_default_ids() {
        let dir = tempfile::tempdir().unwrap();
        let content =
            "{\"id\": \"x\", \"text\": \"first\"}\n\n{\"text\": \"second\", \"extra\": 1}\n";
        let path = write(dir.path(), "d.jsonl", content.as_bytes());
        let docs = read_documents(&[&path]).unwrap();
        let ids: Vec<_> = docs.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["x".to_owned(), format!("{}:3", path.display())]);
        assert_eq!(docs[1].text, "second");
    }

    /// The error of reading a file `name` holding `content`, and its message.
    fn error_of(name: &str, content: &[u8]) -> (CorpusError, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, content);
        let error = read_documents(&[&path]).unwrap_err();
        let message = error.to_string();
        (error, message)
    }

    #[test]
    fn jsonl_without_text_names_file_and_line() {
        let (error, message) = error_of("d.jsonl", b"{\"text\": \"ok\"}\n{\"body\": \"no\"}\n");
        assert!(matches!(error, CorpusError::MissingText { line: 2, .. }));
        assert!(message.contains("d.jsonl:2"), "{message}");
    }

    #[test]
    fn jsonl_with_bad_json_or_id_is_rejected() {
        let (error, message) = error_of("bad.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \n");
        assert!(matches!(error, CorpusError::Json { line: 2, .. }));
        assert!(message.contains("bad.jsonl:2"), "{message}");
        let (error, _) = error_of("array.jsonl", b"[1, 2]\n");
        assert!(matches!(error, CorpusError::Json { line: 1, .. }));
        let (error, _) = error_of("id.jsonl", b"{\"text\": \"t\", \"id\": 7}\n");
        assert!(matches!(error, CorpusError::BadId { line: 1, .. }));
    }

    #[test]
    fn non_utf8_is_rejected_naming_the_file() {
        let (error, message) = error_of("latin1.txt", b"caf\xe9\n");
        assert!(matches!(error, CorpusError::NotUtf8 { valid_up_to: 3, .. }));
        assert!(message.contains("latin1.txt"), "{message}");
    }

    #[test]
    fn directories_are_walked_recursively_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.txt", b"b");
        write(dir.path(), "a/z.jsonl", b"{\"text\": \"az\"}\n");
        write(dir.path(), "a/c.txt", b"ac");
        write(dir.path(), "notes.md", b"skipped");
        write(dir.path(), "c/d/e.txt", b"cde");
        let texts: Vec<_> = read_documents(&[dir.path()])
            .unwrap()
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(texts, ["ac", "az", "b", "cde"]);
        // The same files, in the same order, are what a run records it read.
        let files = document_files(&[dir.path()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        let want: Vec<PathBuf> = ["a/c.txt", "a/z.jsonl", "b.txt", "c/d/e.txt"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn explicit_unsupported_file_and_missing_path_are_errors() {
        let (error, _) = error_of("notes.md", b"x");
        assert!(matches!(error, CorpusError::Unsupported { .. }));
        let missing = tempfile::tempdir().unwrap().path().join("missing.txt");
        let error = read_documents(&[&missing]).unwrap_err();
        assert!(matches!(error, CorpusError::Io { .. }));
        // The message names the path and the reason, once: no separate cause
        // for an error chain to print again.
        let message = error.to_string();
        assert!(
            message.contains("missing.txt") && message.contains("No such file"),
            "{message}"
        );
        assert!(std::error::Error::source(&error).is_none());
    }
}

/// Up to `max_bytes` of text made of whole documents spread evenly over `docs`
/// (every `k`-th document, `k` chosen so that the sample covers the corpus),
/// separated by blank lines. Deterministic: the anchor ships such a sample of
/// its public corpus for router calibration.
pub fn spread_sample(docs: &[Document], max_bytes: usize) -> String {
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    let stride = (total / max_bytes.max(1)).max(1);
    let mut out = String::new();
    for d in docs.iter().step_by(stride) {
        if !out.is_empty() && out.len() + 2 + d.text.len() > max_bytes {
            break;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&d.text);
    }
    out
}

#[cfg(test)]
mod sample_tests {
    use super::{Document, spread_sample};

    fn doc(i: usize) -> Document {
        Document {
            id: i.to_string(),
            text: format!("document {i:03}"),
        }
    }

    #[test]
    fn spread_sample_takes_whole_documents_across_the_corpus() {
        let docs: Vec<Document> = (0..100).map(doc).collect();
        let s = spread_sample(&docs, 130);
        assert!(s.len() <= 130);
        assert!(s.starts_with("document 000\n\n"));
        // 1200 bytes of text for 130 bytes of sample: every 9th document.
        assert!(s.contains("document 009") && !s.contains("document 001"));
        assert_eq!(
            spread_sample(&docs, 100_000).matches("document").count(),
            100
        );
        assert_eq!(spread_sample(&[], 10), "");
    }
}
