//! Reed-Solomon coding of pocket volumes.
//!
//! An erasure-coded volume has `k` data shards — byte-identical copies of
//! sealed bucket extents, of different lengths — and `m` parity shards, each
//! as long as the longest data shard. Parity is computed as if every data
//! shard were padded with zeros to that length; the padding is never stored.
//!
//! - [`StripeEncoder`] computes the parity of a volume stripe by stripe, so
//!   the memory an encoding takes is `(k + m) × stripe` (and the parity of
//!   up to 3 stripes being hashed on a thread of its own), whatever the
//!   extent size.
//! - [`reconstruct_range`] rebuilds any byte range of one shard from the same
//!   range of `k` others; [`read_record_degraded`] uses it to read one record
//!   of a lost data extent: its trailer, then its index, then the record —
//!   never a whole extent — and checks the bytes against the key.
//!
//! Both the coordinator's encoding job and `pocket ec-bench` run this code,
//! so the benchmark measures the path, not a copy of it.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pocket_format::{IndexEntry, RecordHeader, Trailer, INDEX_ENTRY_LEN, RECORD_HEADER_LEN, TRAILER_LEN};
use pocket_types::Key;
use reed_solomon_erasure::galois_8::ReedSolomon;

/// Largest total of data and parity shards a volume may have (GF(2^8) allows
/// 256; more than this would only spread a volume over too many OSDs).
pub const MAX_SHARDS: usize = 32;

/// Bytes of one shard reconstructed per step of a degraded read: bounds the
/// memory of a reconstruction to `(k + 1) ×` this, whatever the record size.
pub const RECONSTRUCT_STEP_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ErasureError {
    #[error("invalid erasure code {data}+{parity}: need 1 ≤ data, 1 ≤ parity, data + parity ≤ {MAX_SHARDS}")]
    InvalidCode { data: usize, parity: usize },
    #[error("shard {shard}: expected {expected} bytes, got {got}")]
    WrongLength { shard: usize, expected: usize, got: usize },
    #[error("need {needed} shards to reconstruct, only {available} are available")]
    TooFewShards { needed: usize, available: usize },
    #[error("shard {0} does not exist in this volume")]
    NoSuchShard(usize),
    /// The coding library refused a call this crate made: shards of the
    /// wrong number or length reached it, a bug of the caller's checks.
    #[error("coding library refused to {op}: {source}")]
    Library {
        op: CodecOp,
        #[source]
        source: reed_solomon_erasure::Error,
    },
}

/// What [`Codec`] asked the coding library to do ([`ErasureError::Library`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecOp {
    Create,
    Encode,
    ReconstructData,
}

impl std::fmt::Display for CodecOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodecOp::Create => "create the code",
            CodecOp::Encode => "encode parity",
            CodecOp::ReconstructData => "reconstruct data shards",
        })
    }
}

impl CodecOp {
    fn refused(self) -> impl FnOnce(reed_solomon_erasure::Error) -> ErasureError {
        move |source| ErasureError::Library { op: self, source }
    }
}

/// An RS(k, m) code over GF(2^8).
pub struct Codec {
    rs: ReedSolomon,
    data: usize,
    parity: usize,
}

impl Codec {
    pub fn new(data: usize, parity: usize) -> Result<Codec, ErasureError> {
        if data == 0 || parity == 0 || data + parity > MAX_SHARDS {
            return Err(ErasureError::InvalidCode { data, parity });
        }
        let rs = ReedSolomon::new(data, parity).map_err(CodecOp::Create.refused())?;
        Ok(Codec { rs, data, parity })
    }

    pub fn data_shards(&self) -> usize {
        self.data
    }

    pub fn parity_shards(&self) -> usize {
        self.parity
    }

    pub fn total_shards(&self) -> usize {
        self.data + self.parity
    }

    /// The library's encode: `data` (k slices) and `parity` (m buffers) all of one length.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [Vec<u8>]) -> Result<(), ErasureError> {
        self.rs.encode_sep(data, parity).map_err(CodecOp::Encode.refused())
    }

    /// The library's reconstruction of missing data shards in place; the
    /// present ones must all have one length.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.rs.reconstruct_data(shards).map_err(CodecOp::ReconstructData.refused())
    }
}

/// The sizes of a volume's shards: data shard `i` holds `data_sizes[i]`
/// bytes; every parity shard holds `shard_len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeShape {
    pub data_sizes: Vec<u64>,
    pub parity: usize,
}

impl VolumeShape {
    /// Length of every parity shard: the longest data shard.
    pub fn shard_len(&self) -> u64 {
        self.data_sizes.iter().copied().max().unwrap_or(0)
    }

    pub fn total_shards(&self) -> usize {
        self.data_sizes.len() + self.parity
    }

    /// Stored length of shard `shard`.
    pub fn size_of(&self, shard: usize) -> u64 {
        self.data_sizes.get(shard).copied().unwrap_or_else(|| self.shard_len())
    }

    /// The part of `[offset, offset + len)` that shard `shard` stores; the
    /// rest of the range is zero padding that needs no I/O.
    pub fn stored_len(&self, shard: usize, offset: u64, len: usize) -> usize {
        let size = self.size_of(shard);
        if offset >= size {
            0
        } else {
            (size - offset).min(len as u64) as usize
        }
    }

    /// Bytes on disk: data shards plus `parity × shard_len`.
    pub fn stored_bytes(&self) -> u64 {
        self.data_sizes.iter().sum::<u64>() + self.parity as u64 * self.shard_len()
    }
}

/// Parity of a volume, one stripe at a time. Feed each data shard's bytes of
/// the stripe [`next_stripe`](StripeEncoder::next_stripe) names, in order;
/// get the parity pieces back; [`finish`](StripeEncoder::finish) gives the
/// BLAKE3 of every parity shard.
pub struct StripeEncoder {
    codec: Arc<Codec>,
    shape: VolumeShape,
    stripe_bytes: usize,
    offset: u64,
    hashing: ParityHashing,
}

/// Stripes of parity the hashing thread may have queued: bounds the memory
/// it holds to this many stripes' parity beyond the one it hashes.
const HASH_QUEUE_STRIPES: usize = 2;

/// Where the parity shards' BLAKE3 is computed. Hashing the parity costs
/// about as much CPU as encoding it (3 MiB hashed per 6 MiB encoded at
/// RS 6+3), so it runs on a thread of its own, a stripe behind the
/// encoding, in stripe order; inline only if that thread cannot start.
enum ParityHashing {
    Thread {
        stripes: std::sync::mpsc::SyncSender<Vec<Bytes>>,
        hasher: std::thread::JoinHandle<Vec<[u8; 32]>>,
    },
    Inline(Vec<blake3::Hasher>),
}

impl ParityHashing {
    fn start(parity: usize) -> ParityHashing {
        let (stripes, queued) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(HASH_QUEUE_STRIPES);
        let spawned = std::thread::Builder::new().name("parity-hash".into()).spawn(move || {
            let mut hashers: Vec<blake3::Hasher> = (0..parity).map(|_| blake3::Hasher::new()).collect();
            for pieces in queued {
                for (hasher, piece) in hashers.iter_mut().zip(&pieces) {
                    hasher.update(piece);
                }
            }
            hashers.iter().map(|h| *h.finalize().as_bytes()).collect()
        });
        match spawned {
            Ok(hasher) => ParityHashing::Thread { stripes, hasher },
            Err(_) => ParityHashing::Inline((0..parity).map(|_| blake3::Hasher::new()).collect()),
        }
    }

    fn add(&mut self, pieces: &[Bytes]) {
        match self {
            // A send fails only if the thread died; `finish` then re-raises its panic.
            ParityHashing::Thread { stripes, .. } => drop(stripes.send(pieces.to_vec())),
            ParityHashing::Inline(hashers) => {
                for (hasher, piece) in hashers.iter_mut().zip(pieces) {
                    hasher.update(piece);
                }
            }
        }
    }

    fn finish(self) -> Vec<[u8; 32]> {
        match self {
            ParityHashing::Thread { stripes, hasher } => {
                drop(stripes);
                hasher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
            ParityHashing::Inline(hashers) => hashers.iter().map(|h| *h.finalize().as_bytes()).collect(),
        }
    }
}

/// The byte range of a volume one stripe covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    pub offset: u64,
    pub len: usize,
}

impl StripeEncoder {
    pub fn new(codec: Arc<Codec>, data_sizes: Vec<u64>, stripe_bytes: usize) -> Result<StripeEncoder, ErasureError> {
        if data_sizes.len() != codec.data_shards() {
            return Err(ErasureError::InvalidCode { data: data_sizes.len(), parity: codec.parity_shards() });
        }
        let parity = codec.parity_shards();
        Ok(StripeEncoder {
            codec,
            shape: VolumeShape { data_sizes, parity },
            stripe_bytes: stripe_bytes.max(1),
            offset: 0,
            hashing: ParityHashing::start(parity),
        })
    }

    pub fn shape(&self) -> &VolumeShape {
        &self.shape
    }

    /// The stripe to encode next, or None when the volume is done.
    pub fn next_stripe(&self) -> Option<Stripe> {
        let total = self.shape.shard_len();
        (self.offset < total).then(|| Stripe {
            offset: self.offset,
            len: (total - self.offset).min(self.stripe_bytes as u64) as usize,
        })
    }

    /// Encodes the next stripe. `data[i]` must be exactly the bytes data
    /// shard `i` stores in it (`shape().stored_len(i, ..)`, possibly none).
    pub fn encode_next(&mut self, data: &[Bytes]) -> Result<Vec<Bytes>, ErasureError> {
        let Some(stripe) = self.next_stripe() else {
            return Ok(Vec::new());
        };
        if data.len() != self.codec.data_shards() {
            return Err(ErasureError::TooFewShards { needed: self.codec.data_shards(), available: data.len() });
        }
        let mut padded: Vec<Vec<u8>> = Vec::new();
        let mut pad_of = vec![usize::MAX; data.len()];
        for (i, piece) in data.iter().enumerate() {
            let expected = self.shape.stored_len(i, stripe.offset, stripe.len);
            if piece.len() != expected {
                return Err(ErasureError::WrongLength { shard: i, expected, got: piece.len() });
            }
            if expected < stripe.len {
                let mut buffer = vec![0u8; stripe.len];
                buffer[..expected].copy_from_slice(piece);
                pad_of[i] = padded.len();
                padded.push(buffer);
            }
        }
        let slices: Vec<&[u8]> = data
            .iter()
            .enumerate()
            .map(|(i, piece)| if pad_of[i] == usize::MAX { &piece[..] } else { &padded[pad_of[i]][..] })
            .collect();
        let mut parity: Vec<Vec<u8>> = vec![vec![0u8; stripe.len]; self.codec.parity_shards()];
        self.codec.encode(&slices, &mut parity)?;
        let parity: Vec<Bytes> = parity.into_iter().map(Bytes::from).collect();
        self.hashing.add(&parity);
        self.offset += stripe.len as u64;
        Ok(parity)
    }

    /// BLAKE3 of each parity shard; None if stripes are still missing.
    /// Waits for the hashing of the last stripes.
    pub fn finish(self) -> Option<Vec<[u8; 32]>> {
        if self.next_stripe().is_some() {
            return None;
        }
        Some(self.hashing.finish())
    }
}

/// Rebuilds bytes `[offset, offset + len)` of shard `want` (which must be a
/// data shard) from `pieces`: for each shard, None (not used) or exactly the
/// bytes it stores in that range. At least k pieces must be given.
pub fn reconstruct_range(
    codec: &Codec,
    shape: &VolumeShape,
    want: usize,
    offset: u64,
    len: usize,
    pieces: &[Option<Bytes>],
) -> Result<Bytes, ErasureError> {
    let k = codec.data_shards();
    if want >= k || pieces.len() != codec.total_shards() {
        return Err(ErasureError::NoSuchShard(want));
    }
    let wanted_len = shape.stored_len(want, offset, len);
    if let Some(Some(piece)) = pieces.get(want) {
        if piece.len() == wanted_len {
            return Ok(piece.clone());
        }
    }
    let available = pieces.iter().filter(|p| p.is_some()).count();
    if available < k {
        return Err(ErasureError::TooFewShards { needed: k, available });
    }
    let mut shards = padded(k, shape, want, offset, len, pieces)?;
    codec.reconstruct_data(&mut shards)?;
    let mut rebuilt = shards.swap_remove(want).ok_or(ErasureError::NoSuchShard(want))?;
    rebuilt.truncate(wanted_len);
    Ok(Bytes::from(rebuilt))
}

/// Rebuilds bytes `[offset, offset + len)` of any shard `want`, data or
/// parity, from `pieces` as for [`reconstruct_range`] (at least k of them,
/// `want`'s own piece absent). A parity shard's range is the parity of the
/// stripe's data, rebuilt first where some of it is missing. Used by repair
/// to rebuild a whole lost shard, a stripe at a time.
pub fn rebuild_range(
    codec: &Codec,
    shape: &VolumeShape,
    want: usize,
    offset: u64,
    len: usize,
    pieces: &[Option<Bytes>],
) -> Result<Bytes, ErasureError> {
    let k = codec.data_shards();
    if want >= codec.total_shards() || pieces.len() != codec.total_shards() {
        return Err(ErasureError::NoSuchShard(want));
    }
    if want < k {
        return reconstruct_range(codec, shape, want, offset, len, pieces);
    }
    let mut shards = padded(k, shape, want, offset, len, pieces)?;
    if shards[..k].iter().any(Option::is_none) {
        codec.reconstruct_data(&mut shards)?;
    }
    let data: Vec<&[u8]> = shards[..k].iter().map(|shard| shard.as_deref().unwrap_or(&[])).collect();
    let mut parity = vec![vec![0u8; len]; codec.parity_shards()];
    codec.encode(&data, &mut parity)?;
    let mut rebuilt = parity.swap_remove(want - k);
    rebuilt.truncate(shape.stored_len(want, offset, len));
    Ok(Bytes::from(rebuilt))
}

/// The first k of `pieces` other than `want`, each padded with zeros to
/// `len` after its stored length is checked; the others None.
fn padded(
    k: usize,
    shape: &VolumeShape,
    want: usize,
    offset: u64,
    len: usize,
    pieces: &[Option<Bytes>],
) -> Result<Vec<Option<Vec<u8>>>, ErasureError> {
    let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(pieces.len());
    let mut used = 0;
    for (shard, piece) in pieces.iter().enumerate() {
        match piece {
            Some(bytes) if shard != want && used < k => {
                let expected = shape.stored_len(shard, offset, len);
                if bytes.len() != expected {
                    return Err(ErasureError::WrongLength { shard, expected, got: bytes.len() });
                }
                let mut buffer = vec![0u8; len];
                buffer[..expected].copy_from_slice(bytes);
                shards.push(Some(buffer));
                used += 1;
            }
            _ => shards.push(None),
        }
    }
    if used < k {
        return Err(ErasureError::TooFewShards { needed: k, available: used });
    }
    Ok(shards)
}

#[derive(Debug, thiserror::Error)]
pub enum DegradedError {
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    #[error("reconstructed {what} of shard {shard} is invalid: {detail}")]
    Invalid { shard: usize, what: &'static str, detail: String },
    #[error("key {0} is not in the reconstructed index")]
    NotInIndex(Key),
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("no set of {needed} surviving shards reconstructs a record that hashes to the key (last: {last})")]
    Unrecoverable { needed: usize, last: String },
}

/// Reads, from the surviving shards of a volume, bytes `[offset, offset+len)`
/// of the shards it names. Implementations return exactly the bytes stored
/// (the caller asks only within a shard's size) or an error when the shard
/// is unavailable.
pub trait ShardReader {
    /// Why a shard could not be read; the reader's own type (the frontend's
    /// carries the OSD client's error). A shard that fails is left out of the
    /// rest of the reconstruction.
    type Error: std::error::Error + Send + Sync + 'static;

    fn read(&self, shard: usize, offset: u64, len: usize) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
}

/// One degraded read: the volume, where to read it, and what to find.
struct Job<'a, R> {
    codec: &'a Codec,
    shape: &'a VolumeShape,
    reader: &'a R,
    want: usize,
    key: &'a Key,
    max_record_bytes: u64,
}

impl<R: ShardReader + Sync> Job<'_, R> {
    /// Reconstructs `[offset, offset + len)` of shard `want` from the shards
    /// in `order` (skipping `bad` ones, marking those that fail as bad), k at a time.
    async fn reconstruct(&self, order: &[usize], bad: &mut [bool], offset: u64, len: usize) -> Result<Bytes, DegradedError> {
        let (codec, shape, reader, want) = (self.codec, self.shape, self.reader, self.want);
        let k = codec.data_shards();
        let mut pieces: Vec<Option<Bytes>> = vec![None; codec.total_shards()];
        let mut have = 0;
        let mut candidates = order.iter().copied().filter(|&s| s != want);
        while have < k {
            // Ask as many shards at once as are still needed.
            let mut batch = Vec::new();
            while batch.len() < k - have {
                match candidates.next() {
                    Some(shard) if !bad[shard] => batch.push(shard),
                    Some(_) => {}
                    None => break,
                }
            }
            if batch.is_empty() {
                return Err(ErasureError::TooFewShards { needed: k, available: have }.into());
            }
            let reads = batch.iter().map(|&shard| {
                let stored = shape.stored_len(shard, offset, len);
                async move {
                    let result = if stored == 0 { Ok(Bytes::new()) } else { reader.read(shard, offset, stored).await };
                    (shard, stored, result)
                }
            });
            for (shard, stored, result) in futures::future::join_all(reads).await {
                match result {
                    Ok(bytes) if bytes.len() == stored => {
                        pieces[shard] = Some(bytes);
                        have += 1;
                    }
                    _ => bad[shard] = true,
                }
            }
        }
        Ok(reconstruct_range(codec, shape, want, offset, len, &pieces)?)
    }
}

/// Reads the record of `key` from data shard `want` without that shard:
/// reconstructs the extent's trailer (its last 32 bytes), then its index
/// (streamed in steps, checksum verified) to find the record, then the
/// record itself, whose header, CRC and BLAKE3 must match `key`. If a
/// surviving shard returned wrong bytes, other sets of k shards are tried.
pub async fn read_record_degraded<R: ShardReader + Sync>(
    codec: &Codec,
    shape: &VolumeShape,
    reader: &R,
    want: usize,
    key: &Key,
    max_record_bytes: u64,
) -> Result<Bytes, DegradedError> {
    let total = codec.total_shards();
    if want >= codec.data_shards() || shape.total_shards() != total {
        return Err(ErasureError::NoSuchShard(want).into());
    }
    let job = Job { codec, shape, reader, want, key, max_record_bytes };
    let mut bad = vec![false; total];
    bad[want] = true;
    let order: Vec<usize> = (0..total).collect();
    let mut last = String::new();
    // First with every shard; if the result is invalid (a survivor returned
    // wrong bytes), again without each other shard in turn: one corrupt
    // survivor among k + m − 1 is then left out by one of the attempts.
    let exclusions = std::iter::once(None).chain((0..total).filter(|&s| s != want).map(Some));
    for excluded in exclusions {
        let mut attempt_bad = bad.clone();
        if let Some(shard) = excluded {
            if attempt_bad[shard] {
                continue;
            }
            attempt_bad[shard] = true;
        }
        let result = read_record_once(&job, &order, &mut attempt_bad).await;
        // Shards that failed to answer stay out of later attempts.
        for shard in 0..total {
            if attempt_bad[shard] && Some(shard) != excluded {
                bad[shard] = true;
            }
        }
        match result {
            Ok(data) => return Ok(data),
            // Decided: the index (checksum verified) lacks the key, or the record is too large.
            Err(e @ (DegradedError::NotInIndex(_) | DegradedError::TooLarge { .. })) => return Err(e),
            Err(e @ DegradedError::Erasure(ErasureError::TooFewShards { .. })) if excluded.is_none() => return Err(e),
            Err(e) => last = e.to_string(),
        }
    }
    Err(DegradedError::Unrecoverable { needed: codec.data_shards(), last })
}

async fn read_record_once<R: ShardReader + Sync>(
    job: &Job<'_, R>,
    order: &[usize],
    bad: &mut [bool],
) -> Result<Bytes, DegradedError> {
    let (shape, want, key, max_record_bytes) = (job.shape, job.want, job.key, job.max_record_bytes);
    let invalid = |what: &'static str, detail: String| DegradedError::Invalid { shard: want, what, detail };
    let size = shape.size_of(want);
    if size < TRAILER_LEN as u64 {
        return Err(invalid("extent", format!("{size} bytes cannot hold a trailer")));
    }
    let trailer_bytes =
        job.reconstruct(order, bad, size - TRAILER_LEN as u64, TRAILER_LEN).await?;
    let trailer = Trailer::decode(&trailer_bytes).map_err(|e| invalid("trailer", e.to_string()))?;
    if trailer.file_len() != Some(size) {
        return Err(invalid("trailer", format!("describes a {:?}-byte extent, the volume records {size}", trailer.file_len())));
    }
    let index_len = trailer.index_len().ok_or_else(|| invalid("trailer", "index length overflows".into()))?;
    // Scan the index in whole-entry steps; trust what was found only once the
    // checksum of the whole index matches.
    let step = (RECONSTRUCT_STEP_BYTES / INDEX_ENTRY_LEN) * INDEX_ENTRY_LEN;
    let mut crc = 0u32;
    let mut found: Option<IndexEntry> = None;
    let mut at = 0u64;
    while at < index_len {
        let len = (index_len - at).min(step as u64) as usize;
        let bytes = job.reconstruct(order, bad, trailer.index_offset + at, len).await?;
        crc = crc32c::crc32c_append(crc, &bytes);
        for chunk in bytes.chunks_exact(INDEX_ENTRY_LEN) {
            let entry = IndexEntry::decode(chunk.try_into().expect("chunks_exact yields whole entries"));
            if entry.key == *key && found.is_none() {
                found = Some(entry);
            }
        }
        at += len as u64;
    }
    if crc != trailer.index_crc32c {
        return Err(invalid("index", format!("checksum {crc:#010x}, trailer says {:#010x}", trailer.index_crc32c)));
    }
    let entry = found.ok_or(DegradedError::NotInIndex(*key))?;
    if entry.data_len > max_record_bytes {
        return Err(DegradedError::TooLarge { len: entry.data_len, max: max_record_bytes });
    }
    let record_len = RECORD_HEADER_LEN as u64 + entry.data_len;
    if entry.offset.checked_add(record_len).is_none_or(|end| end > trailer.index_offset) {
        return Err(invalid("index", "record lies outside the extent".into()));
    }
    let mut record = BytesMut::with_capacity(record_len as usize);
    let mut at = 0u64;
    while at < record_len {
        let len = (record_len - at).min(RECONSTRUCT_STEP_BYTES as u64) as usize;
        let bytes = job.reconstruct(order, bad, entry.offset + at, len).await?;
        record.extend_from_slice(&bytes);
        at += len as u64;
    }
    let record = record.freeze();
    let header = RecordHeader::decode(&record).map_err(|e| invalid("record header", e.to_string()))?;
    if header.key != *key || header.data_len != entry.data_len {
        return Err(invalid("record header", "names another key or length than the index".into()));
    }
    let data = record.slice(RECORD_HEADER_LEN..);
    header.check_data(&data).map_err(|e| invalid("record data", e.to_string()))?;
    if Key::of(&data) != *key {
        return Err(invalid("record data", "does not hash to the key".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
