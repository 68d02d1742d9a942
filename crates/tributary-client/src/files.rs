//! Files on the wire: checkpoint directories sent as a list of files
//! (name, size, SHA-256) followed by their bytes in chunks, and received the
//! same way. Downloads are written to a temporary file beside the target and
//! renamed into place only once their size and SHA-256 match the header.

use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tributary_protos::v1;

use crate::convert;
use crate::error::ClientError;

/// A file written by a download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadedFile {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, checked against the server's header.
    pub sha256: [u8; 32],
}

/// Whether `name` is a plain file name: not empty, no path separator, not
/// `.` or `..`, no NUL — safe to join to a directory on either side.
pub fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// One message of a file stream, whatever the service.
#[derive(Debug)]
pub(crate) enum Part {
    /// Starts a file.
    File {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// Its SHA-256.
        sha256: Option<v1::Digest>,
    },
    /// The next bytes of the current file.
    Chunk(Vec<u8>),
}

/// A file being received into a temporary file.
struct Incoming {
    name: String,
    size: u64,
    expected: [u8; 32],
    temp: PathBuf,
    file: tokio::fs::File,
    hasher: sha2::Sha256,
    written: u64,
}

impl Incoming {
    async fn start(
        dir: &Path,
        name: String,
        size: u64,
        sha256: Option<&v1::Digest>,
    ) -> Result<Self, ClientError> {
        if !safe_file_name(&name) {
            return Err(ClientError::Protocol(format!("unsafe file name {name:?}")));
        }
        let expected = convert::digest("file.sha256", sha256)?.0;
        let temp = dir.join(format!(".{name}.partial"));
        let file = tokio::fs::File::create(&temp).await?;
        Ok(Self {
            name,
            size,
            expected,
            temp,
            file,
            hasher: sha2::Sha256::new(),
            written: 0,
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.written += data.len() as u64;
        if self.written > self.size {
            return Err(ClientError::Protocol(format!(
                "{} is longer than its header says",
                self.name
            )));
        }
        self.hasher.update(data);
        self.file.write_all(data).await?;
        Ok(())
    }

    /// Checks the file against its header and renames it into place.
    async fn finish(mut self, dir: &Path) -> Result<DownloadedFile, ClientError> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let sha256: [u8; 32] = self.hasher.finalize().into();
        if self.written != self.size || sha256 != self.expected {
            let _ = tokio::fs::remove_file(&self.temp).await;
            return Err(ClientError::Protocol(format!(
                "{} does not match its header",
                self.name
            )));
        }
        let path = dir.join(&self.name);
        tokio::fs::rename(&self.temp, &path).await?;
        Ok(DownloadedFile {
            path,
            size: self.written,
            sha256,
        })
    }
}

/// Receives a stream of files into `dir` (created if missing): each file is
/// checked against its header (size, SHA-256) and only then renamed into
/// place; a file sent twice, a chunk before any file or a mismatch fails the
/// whole download. `part` reads a message as a [`Part`].
pub(crate) async fn receive<M>(
    stream: &mut tonic::Streaming<M>,
    dir: &Path,
    part: impl Fn(M) -> Option<Part>,
) -> Result<Vec<DownloadedFile>, ClientError> {
    tokio::fs::create_dir_all(dir).await?;
    let mut files: Vec<DownloadedFile> = Vec::new();
    let mut current: Option<Incoming> = None;
    let result: Result<(), ClientError> = async {
        loop {
            let next = stream.message().await?.and_then(&part);
            if !matches!(next, Some(Part::Chunk(_)))
                && let Some(done) = current.take()
            {
                files.push(done.finish(dir).await?);
            }
            match next {
                None => return Ok(()),
                Some(Part::File { name, size, sha256 }) => {
                    if files
                        .iter()
                        .any(|f| f.path.file_name() == Some(std::ffi::OsStr::new(&name)))
                    {
                        return Err(ClientError::Protocol(format!("{name} was sent twice")));
                    }
                    current = Some(Incoming::start(dir, name, size, sha256.as_ref()).await?);
                }
                Some(Part::Chunk(data)) => {
                    let Some(file) = current.as_mut() else {
                        return Err(ClientError::Protocol("chunk before any file".into()));
                    };
                    file.write(&data).await?;
                }
            }
        }
    }
    .await;
    if let Some(unfinished) = current {
        let _ = tokio::fs::remove_file(&unfinished.temp).await;
    }
    result.map(|()| files)
}

/// A file of a local directory about to be sent.
#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    /// Its name in the directory.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// Every regular file of `dir`, sorted by name, with its size and SHA-256.
pub(crate) async fn list_dir(dir: &Path) -> Result<Vec<LocalFile>, ClientError> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if !entry.file_type().await?.is_file() {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|n| {
            ClientError::Protocol(format!("{} is not a UTF-8 file name", n.to_string_lossy()))
        })?;
        let (size, sha256) = hash_file(&path).await?;
        out.push(LocalFile {
            name,
            path,
            size,
            sha256,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), ClientError> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            return Ok((size, hasher.finalize().into()));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

/// Sends `first`, then the bytes of `paths` in order as chunks of at most
/// `chunk_size` (a chunk never spans two files), made messages by `chunk`.
/// Stops quietly when the server ends the call: its answer says why.
pub(crate) fn spawn_sender<M: Send + 'static>(
    first: M,
    paths: Vec<PathBuf>,
    chunk_size: usize,
    chunk: fn(v1::Chunk) -> M,
) -> (
    tokio_stream::wrappers::ReceiverStream<M>,
    tokio::task::JoinHandle<Result<(), std::io::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return Ok(());
        }
        let mut buffer = vec![0u8; chunk_size];
        for path in paths {
            let mut file = tokio::fs::File::open(&path).await?;
            loop {
                let n = file.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                let data = buffer[..n].to_vec();
                if tx.send(chunk(v1::Chunk { data })).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// The answer of a call fed by [`spawn_sender`], once the sender has stopped:
/// a local read error first, else the server's answer.
pub(crate) async fn finish_sending<T>(
    answer: Result<tonic::Response<T>, tonic::Status>,
    sender: tokio::task::JoinHandle<Result<(), std::io::Error>>,
) -> Result<T, ClientError> {
    sender
        .await
        .map_err(|e| ClientError::Protocol(format!("file reader: {e}")))??;
    Ok(answer?.into_inner())
}
