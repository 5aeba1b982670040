//! `pocket ec-bench`: the erasure-coding path measured beside the coding
//! library on the same data, in one process (no disks, no network: those
//! bounds are `pocket limits`' business).
//!
//! It builds k sealed extents of random 4 MiB records (as an OSD would write
//! them), then times:
//! - **encode, library**: `reed-solomon-erasure`'s encode over the same stripes, zero-padded;
//! - **encode, path**: [`pocket_erasure::StripeEncoder`], which the
//!   coordinator runs (padding, parity allocation, parity BLAKE3 on the
//!   encoder's hashing thread), each stripe's parity dropped once returned
//!   as the coordinator drops it once streamed (the library, single-threaded,
//!   writes into buffers it reuses);
//! - **reconstruct, library**: the library rebuilding one lost data shard, stripe by stripe;
//! - **reconstruct, path**: [`pocket_erasure::read_record_degraded`] for
//!   every record of that shard, which the frontend runs on a degraded GET
//!   (trailer, index and record reconstructed from k survivors, record
//!   checked against its key).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pocket_erasure::{Codec, ShardReader, StripeEncoder, VolumeShape};
use pocket_format::{encode_footer, ExtentHeader, IndexEntry, RecordHeader};
use pocket_proto::Key;
use rand::RngCore;
use serde::Serialize;

pub struct EcBenchOptions {
    pub data_shards: usize,
    pub parity_shards: usize,
    pub extent_size_bytes: u64,
    pub stripe_bytes: usize,
    pub record_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct EcBenchReport {
    pub data_shards: usize,
    pub parity_shards: usize,
    pub extent_size_bytes: u64,
    pub stripe_bytes: usize,
    pub data_bytes: u64,
    pub encode_library_gb_per_sec: f64,
    pub encode_path_gb_per_sec: f64,
    pub encode_ratio: f64,
    pub reconstruct_library_gb_per_sec: f64,
    pub reconstruct_path_gb_per_sec: f64,
    pub reconstruct_ratio: f64,
    pub records_reconstructed: usize,
}

/// A sealed extent of `size` bytes at most, filled with random records.
fn sealed_extent(id: u64, size: u64, record_bytes: usize, rng: &mut impl RngCore) -> (Bytes, Vec<Key>) {
    let header = ExtentHeader { extent_id: id, max_size_bytes: size, created_unix_ms: pocket_proto::now_unix_ms() };
    let mut file = header.encode().to_vec();
    let mut entries = Vec::new();
    let mut data = vec![0u8; record_bytes];
    while (file.len() + 56 + record_bytes + 48 * (entries.len() + 1) + 32) as u64 <= size {
        rng.fill_bytes(&mut data);
        let key = Key::of(&data);
        entries.push(IndexEntry { key, offset: file.len() as u64, data_len: data.len() as u64 });
        file.extend_from_slice(&RecordHeader::for_blob(key, &data).encode());
        file.extend_from_slice(&data);
    }
    let index_offset = file.len() as u64;
    file.extend_from_slice(&encode_footer(&entries, index_offset));
    (Bytes::from(file), entries.into_iter().map(|e| e.key).collect())
}

struct Memory {
    shards: Vec<Bytes>,
    lost: usize,
}

/// The error of `Memory`'s one lost shard.
#[derive(Debug)]
struct Lost(usize);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} is lost", self.0)
    }
}

impl std::error::Error for Lost {}

impl ShardReader for Memory {
    type Error = Lost;

    async fn read(&self, shard: usize, offset: u64, len: usize) -> Result<Bytes, Lost> {
        if shard == self.lost {
            return Err(Lost(shard));
        }
        Ok(self.shards[shard].slice(offset as usize..offset as usize + len))
    }
}

fn gb_per_sec(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e9 / seconds.max(1e-9)
}

pub async fn run(options: EcBenchOptions) -> anyhow::Result<EcBenchReport> {
    let (k, m) = (options.data_shards, options.parity_shards);
    let codec = Arc::new(Codec::new(k, m)?);
    let mut rng = rand::rng();
    eprintln!("ec-bench: building {k} sealed extents of {} MiB ...", options.extent_size_bytes >> 20);
    let extents: Vec<(Bytes, Vec<Key>)> =
        (0..k).map(|i| sealed_extent(i as u64 + 1, options.extent_size_bytes, options.record_bytes, &mut rng)).collect();
    let data: Vec<Bytes> = extents.iter().map(|(d, _)| d.clone()).collect();
    let shape = VolumeShape { data_sizes: data.iter().map(|d| d.len() as u64).collect(), parity: m };
    let shard_len = shape.shard_len() as usize;
    let data_bytes: u64 = shape.data_sizes.iter().sum();
    let stripe = options.stripe_bytes;

    // Library: encode the zero-padded shards stripe by stripe.
    let padded: Vec<Vec<u8>> = data
        .iter()
        .map(|d| {
            let mut p = d.to_vec();
            p.resize(shard_len, 0);
            p
        })
        .collect();
    let mut parity_out = vec![vec![0u8; stripe]; m];
    let library = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m)?;
    let started = Instant::now();
    let mut at = 0;
    while at < shard_len {
        let len = stripe.min(shard_len - at);
        let slices: Vec<&[u8]> = padded.iter().map(|p| &p[at..at + len]).collect();
        let mut outs: Vec<&mut [u8]> = parity_out.iter_mut().map(|p| &mut p[..len]).collect();
        library.encode_sep(&slices, &mut outs)?;
        at += len;
    }
    let encode_library = started.elapsed().as_secs_f64();

    // Path: the coordinator's encoder over the same bytes. The coordinator
    // streams each stripe's parity on and drops it; so does this loop.
    let pieces_of = |s: &pocket_erasure::Stripe| -> Vec<Bytes> {
        data.iter()
            .enumerate()
            .map(|(i, d)| match shape.stored_len(i, s.offset, s.len) {
                0 => Bytes::new(),
                stored => d.slice(s.offset as usize..s.offset as usize + stored),
            })
            .collect()
    };
    let mut encoder = StripeEncoder::new(codec.clone(), shape.data_sizes.clone(), stripe)?;
    let started = Instant::now();
    while let Some(s) = encoder.next_stripe() {
        let parity = encoder.encode_next(&pieces_of(&s))?;
        anyhow::ensure!(parity.iter().all(|p| p.len() == s.len), "the encoder returned a short parity piece");
    }
    let path_hashes = encoder.finish().ok_or_else(|| anyhow::anyhow!("encoder did not finish"))?;
    let encode_path = started.elapsed().as_secs_f64();

    // The parity shards again, kept this time, for the reconstruction below.
    let mut encoder = StripeEncoder::new(codec.clone(), shape.data_sizes.clone(), stripe)?;
    let mut parity: Vec<Vec<u8>> = vec![Vec::with_capacity(shard_len); m];
    while let Some(s) = encoder.next_stripe() {
        for (shard, piece) in parity.iter_mut().zip(encoder.encode_next(&pieces_of(&s))?) {
            shard.extend_from_slice(&piece);
        }
    }
    anyhow::ensure!(
        encoder.finish().as_ref() == Some(&path_hashes),
        "two encodings of the same data gave different parity"
    );

    // Library: rebuild data shard 0 from the others, stripe by stripe, into
    // buffers allocated once (the library wants owned, equal-length shards).
    let lost = 0usize;
    let shards: Vec<Bytes> = data.iter().cloned().chain(parity.into_iter().map(Bytes::from)).collect();
    let mut pieces: Vec<Option<Vec<u8>>> = (0..k + m).map(|_| Some(vec![0u8; stripe])).collect();
    let started = Instant::now();
    let mut at = 0;
    while at < shard_len {
        let len = stripe.min(shard_len - at);
        for (s, piece) in pieces.iter_mut().enumerate() {
            if s == lost {
                *piece = None;
                continue;
            }
            let buffer = piece.get_or_insert_with(Vec::new);
            buffer.clear();
            let stored = shape.stored_len(s, at as u64, len);
            buffer.extend_from_slice(&shards[s][at..at + stored]);
            buffer.resize(len, 0);
        }
        library.reconstruct_data(&mut pieces)?;
        at += len;
    }
    let reconstruct_library = started.elapsed().as_secs_f64();

    // Path: every record of the lost shard, as a degraded GET reads it.
    let reader = Memory { shards, lost };
    let started = Instant::now();
    let mut rebuilt_bytes = 0u64;
    for key in &extents[lost].1 {
        let record = pocket_erasure::read_record_degraded(&codec, &shape, &reader, lost, key, u64::MAX).await?;
        rebuilt_bytes += record.len() as u64;
    }
    let reconstruct_path = started.elapsed().as_secs_f64();
    let lost_bytes = shape.data_sizes[lost];

    let encode_library_gb_per_sec = gb_per_sec(data_bytes, encode_library);
    let encode_path_gb_per_sec = gb_per_sec(data_bytes, encode_path);
    let reconstruct_library_gb_per_sec = gb_per_sec(lost_bytes, reconstruct_library);
    let reconstruct_path_gb_per_sec = gb_per_sec(rebuilt_bytes, reconstruct_path);
    Ok(EcBenchReport {
        data_shards: k,
        parity_shards: m,
        extent_size_bytes: options.extent_size_bytes,
        stripe_bytes: stripe,
        data_bytes,
        encode_library_gb_per_sec,
        encode_path_gb_per_sec,
        encode_ratio: encode_path_gb_per_sec / encode_library_gb_per_sec,
        reconstruct_library_gb_per_sec,
        reconstruct_path_gb_per_sec,
        reconstruct_ratio: reconstruct_path_gb_per_sec / reconstruct_library_gb_per_sec,
        records_reconstructed: extents[lost].1.len(),
    })
}

/// `pocket ec-bench`: measures and prints the report, as a table or
/// (`json`) JSON.
pub async fn command(options: EcBenchOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)
}

pub fn render(r: &EcBenchReport) -> String {
    format!(
        "RS {}+{}, {} MiB extents, {} KiB stripes, {:.1} MiB of data\n\n\
         {:<28} {:>10} {:>10} {:>7}\n\
         {:<28} {:>10.2} {:>10.2} {:>7.2}\n\
         {:<28} {:>10.2} {:>10.2} {:>7.2}\n\n\
         encode: GB of data shards per second. reconstruct: GB of the lost shard rebuilt per second\n\
         (path: {} records read one by one through trailer, index and record reconstruction).\n",
        r.data_shards,
        r.parity_shards,
        r.extent_size_bytes >> 20,
        r.stripe_bytes >> 10,
        r.data_bytes as f64 / (1 << 20) as f64,
        "GB/s",
        "library",
        "path",
        "ratio",
        "encode",
        r.encode_library_gb_per_sec,
        r.encode_path_gb_per_sec,
        r.encode_ratio,
        "reconstruct (1 lost shard)",
        r.reconstruct_library_gb_per_sec,
        r.reconstruct_path_gb_per_sec,
        r.reconstruct_ratio,
        r.records_reconstructed,
    )
}
