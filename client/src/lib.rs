//! The Rust client of pocket's public BlobStore service, used by internal
//! services and by the `pocket` CLI. It hashes what it uploads, streams blobs
//! in chunks, and checks what it downloads against the key once more, end to
//! end.
//!
//! Invariants: a download is accepted only if the server announced the
//! blob's length in its first message, sent exactly that many bytes (of the
//! range asked for) and, for a whole blob, bytes that hash to the key. A
//! download to a file ([`Client::get_to_file`]) writes a temporary file of a
//! unique name beside the destination and renames it into place only once
//! all of that holds; on any failure, or if the call is dropped half-way,
//! the temporary file is removed and the destination is untouched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use pocket_proto::framed::{self, Frames};
use pocket_proto::{pb, Key, CHUNK_SIZE_BYTES, MAX_MESSAGE_SIZE_BYTES};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Client configuration, as `pocket up` writes it to `DIR/client.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The frontend's gRPC address (`host:port`).
    pub frontend: String,
    /// This client's certificate (CN `client:NAME`), key and the pocket's CA.
    pub tls: pocket_transport::TlsConfig,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| ClientError::Config { path: path.to_path_buf(), detail: e.to_string() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid client config {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error(transparent)]
    Tls(#[from] pocket_transport::TlsError),
    /// The server (or the connection to it) answered with an error status.
    /// Its code, message and the transport's own causes are all in this
    /// error's message, so the status is deliberately not exposed as the
    /// error's `source` too: a printed cause chain would repeat it.
    #[error("{}", status_text(.0))]
    Rpc(tonic::Status),
    #[error("the server returned bytes that do not hash to {key}")]
    Corrupt { key: Key },
    #[error("the server's stream ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    /// Every GET answer starts with a message announcing the blob's length,
    /// even for an empty blob: an answer without one is not an empty blob.
    #[error("the server's stream ended before announcing the blob's length")]
    EmptyResponse,
    #[error("the server sent more than the {expected} bytes it announced")]
    Overlong { expected: u64 },
    #[error("{path}: not a file to download to (the path has no file name)")]
    NotAFile { path: PathBuf },
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::Rpc(status)
    }
}

/// A short lowercase name for a gRPC status code, as a person would say it
/// (tonic's `Code::description()` is a sentence).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// `CODE: MESSAGE`, then the status's own causes (a transport failure keeps
/// "connection refused" or the TLS alert there), each once.
fn status_text(status: &tonic::Status) -> String {
    let mut text = code_name(status.code()).to_string();
    let mut add = |part: &str| {
        if !part.is_empty() && !text.contains(part) {
            text.push_str(": ");
            text.push_str(part);
        }
    };
    add(status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        add(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Told of each chunk of a transfer as it is sent or received: the chunk's
/// bytes, then the whole blob's length. Meant for progress displays; it
/// runs on the transfer's task, so it must be quick and must not block.
pub type OnProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// What Stat reports about a stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    pub key: String,
    pub length_bytes: u64,
    pub cell_id: u32,
    pub bucket_id: u64,
    pub created_unix_ms: i64,
}

/// Most bytes a download reserves up front (the default largest blob is 32 MiB).
const MAX_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Names tried for a download's temporary file before giving up: each is 64
/// random bits, so a second collision means something else is wrong.
const TEMP_NAME_ATTEMPTS: usize = 8;

/// Longest destination file name kept inside the temporary file's name (so
/// `ls -a` shows what it is for); longer ones are left out, as the name plus
/// the 25-byte suffix must stay under the usual 255-byte limit.
const TEMP_NAME_MAX_STEM_BYTES: usize = 200;

/// Bytes of `offset..offset+length` (length 0: to the end) in a blob of `blob_length`.
fn range_len(blob_length: u64, offset: u64, length: u64) -> u64 {
    match length {
        0 => blob_length.saturating_sub(offset),
        n => n.min(blob_length.saturating_sub(offset)),
    }
}

/// BLAKE3 key and length of a file, read once in pieces (never held whole
/// in memory), on a blocking thread.
pub async fn hash_file(path: &Path) -> Result<(Key, u64), ClientError> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(Key, u64)> {
        let file = std::fs::File::open(&owned)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file)?;
        Ok((Key(*hasher.finalize().as_bytes()), hasher.count()))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|result| result);
    hashed.map_err(|source| ClientError::Io { path: path.to_path_buf(), source })
}

/// 64 unpredictable bits for a temporary name, without a dependency: std
/// seeds each `RandomState` from the OS's randomness (the standard library
/// documents it as randomly keyed).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A download's temporary file beside its destination: removed when dropped
/// (an error, or the download's future dropped half-way) unless
/// [`PartialFile::keep`] was called after it was renamed into place.
struct PartialFile {
    path: PathBuf,
    kept: bool,
}

impl PartialFile {
    /// Creates `DIR/.NAME.pocket-RANDOM.tmp` for the destination `DIR/NAME`
    /// with `create_new`, so it never replaces a file that is already there.
    async fn create(destination: &Path) -> Result<(tokio::fs::File, PartialFile), ClientError> {
        let name = destination.file_name().ok_or_else(|| ClientError::NotAFile { path: destination.to_path_buf() })?;
        let dir = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let mut temp_name = OsString::from(".");
            if name.len() <= TEMP_NAME_MAX_STEM_BYTES {
                temp_name.push(name);
            }
            temp_name.push(format!(".pocket-{:016x}.tmp", random_u64()));
            let path = dir.join(temp_name);
            match tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await {
                Ok(file) => return Ok((file, PartialFile { path, kept: false })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(ClientError::Io { path, source }),
            }
        }
        let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary file name");
        Err(ClientError::Io { path: dir, source })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file's bytes as chunks of [`CHUNK_SIZE_BYTES`], at most `length_bytes`
/// of them. A read error ends the stream and is left in `read_error` for the
/// caller (a request stream cannot carry it).
fn file_chunks(
    file: tokio::fs::File,
    length_bytes: u64,
    read_error: Arc<Mutex<Option<std::io::Error>>>,
    on_progress: Option<OnProgress>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    futures::stream::unfold(file.take(length_bytes), move |mut reader| {
        let (read_error, on_progress) = (read_error.clone(), on_progress.clone());
        async move {
            let mut buffer = vec![0u8; CHUNK_SIZE_BYTES];
            let mut filled = 0;
            while filled < buffer.len() {
                match reader.read(&mut buffer[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        *read_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
                        return None;
                    }
                }
            }
            if filled == 0 {
                return None;
            }
            buffer.truncate(filled);
            if let Some(on_progress) = &on_progress {
                on_progress(filled as u64, length_bytes);
            }
            Some((Bytes::from(buffer), reader))
        }
    })
}

/// Best effort: makes a rename in `dir` durable. Some filesystems refuse to
/// fsync a directory; the file itself was already synced.
async fn sync_dir(dir: &Path) {
    if let Ok(dir) = tokio::fs::File::open(dir).await {
        let _ = dir.sync_all().await;
    }
}

#[derive(Clone)]
pub struct Client {
    inner: pb::blob_store_client::BlobStoreClient<Channel>,
    /// The same channel, for calls framed by hand ([`framed`]).
    channel: Channel,
}

impl Client {
    pub fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let frontend_name = pocket_transport::role_dns_name(pocket_transport::Role::Frontend);
        let channel = pocket_transport::Tls::load(&config.tls)?.channel(&config.frontend, &frontend_name)?;
        Ok(Client {
            channel: channel.clone(),
            inner: pb::blob_store_client::BlobStoreClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_SIZE_BYTES),
        })
    }

    /// Stores `data`; returns its key and whether it was newly stored.
    pub async fn put(&self, data: Bytes) -> Result<(Key, bool), ClientError> {
        let key = Key::of(&data);
        let created = self.put_with_key(key, data).await?;
        Ok((key, created))
    }

    /// Stores `data` under `key` as given (the server checks it).
    pub async fn put_with_key(&self, key: Key, data: Bytes) -> Result<bool, ClientError> {
        let header = put_header(&key, data.len() as u64);
        // Framed by hand so the blob's bytes are not copied by an encoder (ADR 10).
        let frames = Frames::header_and_chunks(&header, pocket_proto::chunks(&data))?;
        let mut channel = self.channel.clone();
        let response: pb::PutResponse = framed::client_streaming(&mut channel, framed::BLOB_STORE_PUT_PATH, frames).await?;
        Ok(response.created)
    }

    /// [`Client::put`], telling `on_progress` of each chunk as it is handed
    /// to the connection.
    pub async fn put_with_progress(&self, data: Bytes, on_progress: Option<OnProgress>) -> Result<(Key, bool), ClientError> {
        let key = Key::of(&data);
        let length_bytes = data.len() as u64;
        let chunks = futures::stream::iter(pocket_proto::chunks(&data)).map(move |chunk| {
            if let Some(on_progress) = &on_progress {
                on_progress(chunk.len() as u64, length_bytes);
            }
            chunk
        });
        let created = self.put_stream(&key, length_bytes, chunks).await?;
        Ok((key, created))
    }

    /// Streams a file up without holding it in memory: one pass to hash it,
    /// one to send it.
    pub async fn put_file(&self, path: &Path) -> Result<(Key, bool), ClientError> {
        let (key, _length) = hash_file(path).await?;
        let created = self.put_file_as(&key, path, None).await?;
        Ok((key, created))
    }

    /// Streams a file already hashed (by [`hash_file`]) up under `key`,
    /// telling `on_progress` of each chunk as it is handed to the connection.
    /// The server checks the key: a file that changed since it was hashed is
    /// refused, not stored under the wrong key. Returns whether it was newly
    /// stored.
    pub async fn put_file_as(&self, key: &Key, path: &Path, on_progress: Option<OnProgress>) -> Result<bool, ClientError> {
        let io = |source| ClientError::Io { path: path.to_path_buf(), source };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let length_bytes = file.metadata().await.map_err(io)?.len();
        let read_error = Arc::new(Mutex::new(None));
        let chunks = file_chunks(file, length_bytes, read_error.clone(), on_progress);
        let result = self.put_stream(key, length_bytes, chunks).await;
        // A read error ended the stream early, so the server saw a short
        // upload and refused it: the read is the cause to report.
        if let Some(source) = read_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            return Err(io(source));
        }
        result
    }

    /// A PUT of `length_bytes` under `key` whose chunks come from `chunks`,
    /// through tonic's encoder (a chunk at a time, as the stream yields it).
    async fn put_stream(
        &self,
        key: &Key,
        length_bytes: u64,
        chunks: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<bool, ClientError> {
        let header = put_header(key, length_bytes);
        let chunks = chunks.map(|chunk| pb::PutRequest { part: Some(pb::put_request::Part::Chunk(chunk)) });
        let messages = futures::stream::iter([header]).chain(chunks);
        let response = self.inner.clone().put(messages).await?;
        Ok(response.into_inner().created)
    }

    /// The whole blob, checked against `key`.
    pub async fn get(&self, key: &Key) -> Result<Bytes, ClientError> {
        self.get_with_progress(key, None).await
    }

    /// [`Client::get`], telling `on_progress` of each chunk as it arrives.
    pub async fn get_with_progress(&self, key: &Key, on_progress: Option<OnProgress>) -> Result<Bytes, ClientError> {
        let mut data = Vec::new();
        self.get_range_inner(key, 0, 0, &mut data, on_progress.as_ref()).await?;
        let data = Bytes::from(data);
        if Key::of(&data) != *key {
            return Err(ClientError::Corrupt { key: *key });
        }
        Ok(data)
    }

    /// Bytes `offset..offset+length` (length 0: to the end), appended to `out`.
    /// Returns the whole blob's length. The server's first message must
    /// announce that length, and exactly the range's bytes must follow; on
    /// an error `out` may hold part of the range.
    pub async fn get_range_into(&self, key: &Key, offset: u64, length: u64, out: &mut Vec<u8>) -> Result<u64, ClientError> {
        self.get_range_inner(key, offset, length, out, None).await
    }

    async fn get_range_inner(
        &self,
        key: &Key,
        offset: u64,
        length: u64,
        out: &mut Vec<u8>,
        on_progress: Option<&OnProgress>,
    ) -> Result<u64, ClientError> {
        let request = pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset, length };
        let mut stream = self.inner.clone().get(request).await?.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(ClientError::EmptyResponse);
        };
        let blob_length = first.blob_length_bytes;
        let expected = range_len(blob_length, offset, length);
        // Room for the whole range at once, so `out` never grows by copying;
        // bounded, as the length is the server's word.
        out.reserve(expected.min(MAX_RESERVE_BYTES) as usize);
        let mut got = 0u64;
        let mut next = Some(first);
        while let Some(message) = next {
            got += message.chunk.len() as u64;
            if got > expected {
                return Err(ClientError::Overlong { expected });
            }
            out.extend_from_slice(&message.chunk);
            if let Some(on_progress) = on_progress {
                on_progress(message.chunk.len() as u64, expected);
            }
            next = stream.message().await?;
        }
        if got != expected {
            return Err(ClientError::Truncated { got, expected });
        }
        Ok(blob_length)
    }

    /// Downloads `key` to `path`. See [`Client::get_to_file_with_progress`].
    pub async fn get_to_file(&self, key: &Key, path: &Path) -> Result<u64, ClientError> {
        self.get_to_file_with_progress(key, path, None).await
    }

    /// Downloads `key` to `path`, telling `on_progress` of each chunk as it
    /// arrives; returns the blob's length. The bytes go to a new temporary
    /// file beside `path` (`.NAME.pocket-RANDOM.tmp`, created only once the
    /// server has answered, never replacing an existing file), hashed as
    /// they arrive; only if they are exactly the announced length and hash
    /// to `key` is the file synced and renamed to `path` (then the directory
    /// is synced, best effort). On any failure, or if this future is dropped
    /// half-way, the temporary file is removed and `path` is left as it was.
    pub async fn get_to_file_with_progress(
        &self,
        key: &Key,
        path: &Path,
        on_progress: Option<OnProgress>,
    ) -> Result<u64, ClientError> {
        let request = pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset: 0, length: 0 };
        let mut stream = self.inner.clone().get(request).await?.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(ClientError::EmptyResponse);
        };
        let expected = first.blob_length_bytes;
        let (mut file, partial) = PartialFile::create(path).await?;
        let io = |source| ClientError::Io { path: partial.path.clone(), source };
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut next = Some(first);
        while let Some(message) = next {
            written += message.chunk.len() as u64;
            if written > expected {
                return Err(ClientError::Overlong { expected });
            }
            hasher.update(&message.chunk);
            file.write_all(&message.chunk).await.map_err(io)?;
            if let Some(on_progress) = &on_progress {
                on_progress(message.chunk.len() as u64, expected);
            }
            next = stream.message().await?;
        }
        if written != expected {
            return Err(ClientError::Truncated { got: written, expected });
        }
        if Key(*hasher.finalize().as_bytes()) != *key {
            return Err(ClientError::Corrupt { key: *key });
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&partial.path, path).await.map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
        let dir = partial.path.parent().map(Path::to_path_buf);
        partial.keep();
        if let Some(dir) = dir {
            sync_dir(&dir).await;
        }
        Ok(written)
    }

    pub async fn exists(&self, keys: &[Key]) -> Result<Vec<bool>, ClientError> {
        let request = pb::ExistsRequest { keys: keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect() };
        Ok(self.inner.clone().exists(request).await?.into_inner().exists)
    }

    pub async fn stat(&self, key: &Key) -> Result<BlobInfo, ClientError> {
        let response = self.inner.clone().stat(pb::StatRequest { key: Bytes::copy_from_slice(key.as_bytes()) }).await?;
        let response = response.into_inner();
        Ok(BlobInfo {
            key: key.to_hex(),
            length_bytes: response.length_bytes,
            cell_id: response.cell_id,
            bucket_id: response.bucket_id,
            created_unix_ms: response.created_unix_ms,
        })
    }

    /// Waits until the frontend answers (used right after start-up).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let probe = self.exists(&[Key([0; 32])]).await;
            match probe {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The first message of a PUT stream.
fn put_header(key: &Key, length_bytes: u64) -> pb::PutRequest {
    pb::PutRequest {
        part: Some(pb::put_request::Part::Header(pb::PutHeader { key: Bytes::copy_from_slice(key.as_bytes()), length_bytes })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One cause per line needs the status's text once: the variant shows
    /// the code by a short name and the message, and is not also the
    /// error's source.
    #[test]
    fn an_rpc_error_reads_once_and_has_no_source() {
        let error = ClientError::from(tonic::Status::not_found("key not found"));
        assert_eq!(error.to_string(), "not found: key not found");
        assert!(std::error::Error::source(&error).is_none());
        let error = ClientError::from(tonic::Status::resource_exhausted(""));
        assert_eq!(error.to_string(), "resource exhausted");
    }

    #[test]
    fn a_range_is_clamped_to_the_blob() {
        assert_eq!(range_len(10, 0, 0), 10);
        assert_eq!(range_len(10, 4, 0), 6);
        assert_eq!(range_len(10, 4, 100), 6);
        assert_eq!(range_len(10, 12, 0), 0);
    }

    #[tokio::test]
    async fn a_partial_file_is_beside_its_destination_and_removed_unless_kept() {
        let dir = std::env::temp_dir().join(format!("pocket-client-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create dir");
        let destination = dir.join("out.bin");
        let (_file, partial) = PartialFile::create(&destination).await.expect("create");
        let path = partial.path.clone();
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        assert!(name.starts_with(".out.bin.pocket-") && name.ends_with(".tmp"), "{name}");
        assert!(path.exists());
        drop(partial);
        assert!(!path.exists(), "dropped without keep: removed");
        let (_file, partial) = PartialFile::create(&destination).await.expect("create");
        let path = partial.path.clone();
        partial.keep();
        assert!(path.exists(), "kept");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
