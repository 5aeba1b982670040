//! The Rust client of pocket's public BlobStore service, used by internal
//! services and by the `pocket` CLI. It hashes what it uploads, streams blobs
//! in chunks, and checks what it downloads against the key once more, end to
//! end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
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
    #[error("{0}")]
    Tls(#[from] pocket_transport::TlsError),
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the server returned bytes that do not hash to {key}")]
    Corrupt { key: Key },
    #[error("the server's stream ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
}

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

/// Bytes of `offset..offset+length` (length 0: to the end) in a blob of `blob_length`.
fn range_len(blob_length: u64, offset: u64, length: u64) -> u64 {
    match length {
        0 => blob_length.saturating_sub(offset),
        n => n.min(blob_length.saturating_sub(offset)),
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
        let header = pb::PutRequest {
            part: Some(pb::put_request::Part::Header(pb::PutHeader {
                key: Bytes::copy_from_slice(key.as_bytes()),
                length_bytes: data.len() as u64,
            })),
        };
        // Framed by hand so the blob's bytes are not copied by an encoder (ADR 10).
        let frames = Frames::header_and_chunks(&header, pocket_proto::chunks(&data))?;
        let mut channel = self.channel.clone();
        let response: pb::PutResponse = framed::client_streaming(&mut channel, framed::BLOB_STORE_PUT_PATH, frames).await?;
        Ok(response.created)
    }

    /// Streams a file up without holding it in memory: one pass to hash it,
    /// one to send it.
    pub async fn put_file(&self, path: &Path) -> Result<(Key, bool), ClientError> {
        let io = |source| ClientError::Io { path: path.to_path_buf(), source };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let length = file.metadata().await.map_err(io)?.len();
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; CHUNK_SIZE_BYTES];
        loop {
            let n = file.read(&mut buffer).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        let key = Key(*hasher.finalize().as_bytes());
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let header = pb::PutRequest {
            part: Some(pb::put_request::Part::Header(pb::PutHeader {
                key: Bytes::copy_from_slice(key.as_bytes()),
                length_bytes: length,
            })),
        };
        let chunks = futures::stream::unfold(file, |mut file| async move {
            let mut buffer = vec![0u8; CHUNK_SIZE_BYTES];
            match file.read(&mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((pb::PutRequest { part: Some(pb::put_request::Part::Chunk(Bytes::from(buffer))) }, file))
                }
            }
        });
        use futures::StreamExt;
        let messages = futures::stream::iter([header]).chain(chunks);
        let response = self.inner.clone().put(messages).await?;
        Ok((key, response.into_inner().created))
    }

    /// The whole blob, checked against `key`.
    pub async fn get(&self, key: &Key) -> Result<Bytes, ClientError> {
        let mut data = Vec::new();
        self.get_range_into(key, 0, 0, &mut data).await?;
        let data = Bytes::from(data);
        if Key::of(&data) != *key {
            return Err(ClientError::Corrupt { key: *key });
        }
        Ok(data)
    }

    /// Bytes `offset..offset+length` (length 0: to the end), appended to `out`.
    /// Returns the whole blob's length.
    pub async fn get_range_into(&self, key: &Key, offset: u64, length: u64, out: &mut Vec<u8>) -> Result<u64, ClientError> {
        let request = pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset, length };
        let mut stream = self.inner.clone().get(request).await?.into_inner();
        let mut blob_length = None;
        let start = out.len();
        while let Some(message) = stream.message().await? {
            if blob_length.is_none() {
                // Room for the whole range at once, so `out` never grows by
                // copying; bounded, as the length is the server's word.
                let announced = range_len(message.blob_length_bytes, offset, length);
                out.reserve(announced.min(MAX_RESERVE_BYTES) as usize);
                blob_length = Some(message.blob_length_bytes);
            }
            out.extend_from_slice(&message.chunk);
        }
        let blob_length = blob_length.unwrap_or(0);
        let expected = range_len(blob_length, offset, length);
        let got = (out.len() - start) as u64;
        if got != expected {
            return Err(ClientError::Truncated { got, expected });
        }
        Ok(blob_length)
    }

    /// Downloads `key` to `path`: written to `path.tmp`, hashed as it
    /// arrives, renamed into place only if it matches the key.
    pub async fn get_to_file(&self, key: &Key, path: &Path) -> Result<u64, ClientError> {
        let tmp = path.with_extension("tmp");
        let io = |source| ClientError::Io { path: tmp.clone(), source };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let request = pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset: 0, length: 0 };
        let mut stream = self.inner.clone().get(request).await?.into_inner();
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut expected = 0u64;
        while let Some(message) = stream.message().await? {
            if written == 0 {
                expected = message.blob_length_bytes;
            }
            hasher.update(&message.chunk);
            file.write_all(&message.chunk).await.map_err(io)?;
            written += message.chunk.len() as u64;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        if written != expected || Key(*hasher.finalize().as_bytes()) != *key {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(if written != expected {
                ClientError::Truncated { got: written, expected }
            } else {
                ClientError::Corrupt { key: *key }
            });
        }
        tokio::fs::rename(&tmp, path).await.map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
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
