use std::collections::HashSet;

use pocket_format::{encode_footer, ExtentHeader, IndexEntry, RecordHeader};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};

use super::*;

/// A sealed extent file with `records`, as an OSD would write it.
fn sealed_extent(id: u64, records: &[Bytes]) -> (Bytes, Vec<Key>) {
    let header = ExtentHeader { extent_id: id, max_size_bytes: 1 << 30, created_unix_ms: 1_700_000_000_000 };
    let mut file = header.encode().to_vec();
    let mut entries = Vec::new();
    for data in records {
        let key = Key::of(data);
        let record = RecordHeader::for_blob(key, data);
        entries.push(IndexEntry { key, offset: file.len() as u64, data_len: data.len() as u64 });
        file.extend_from_slice(&record.encode());
        file.extend_from_slice(data);
    }
    let index_offset = file.len() as u64;
    file.extend_from_slice(&encode_footer(&entries, index_offset));
    (Bytes::from(file), entries.iter().map(|e| e.key).collect())
}

fn random_records(rng: &mut impl Rng, count: usize, max_len: usize) -> Vec<Bytes> {
    (0..count)
        .map(|_| {
            let mut data = vec![0u8; rng.random_range(1..=max_len)];
            rng.fill_bytes(&mut data);
            Bytes::from(data)
        })
        .collect()
}

/// Encodes `data` with a StripeEncoder; returns all k + m shards.
fn encode_volume(codec: &Arc<Codec>, data: &[Bytes], stripe: usize) -> Vec<Bytes> {
    let sizes: Vec<u64> = data.iter().map(|d| d.len() as u64).collect();
    let mut encoder = StripeEncoder::new(codec.clone(), sizes, stripe).expect("encoder");
    let mut parity: Vec<Vec<u8>> = vec![Vec::new(); codec.parity_shards()];
    while let Some(s) = encoder.next_stripe() {
        let pieces: Vec<Bytes> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let stored = encoder.shape().stored_len(i, s.offset, s.len);
                if stored == 0 { Bytes::new() } else { d.slice(s.offset as usize..s.offset as usize + stored) }
            })
            .collect();
        for (out, piece) in parity.iter_mut().zip(encoder.encode_next(&pieces).expect("encode")) {
            out.extend_from_slice(&piece);
        }
    }
    let hashes = encoder.finish().expect("all stripes encoded");
    for (p, h) in parity.iter().zip(&hashes) {
        assert_eq!(blake3::hash(p).as_bytes(), h, "parity hash");
    }
    data.iter().cloned().chain(parity.into_iter().map(Bytes::from)).collect()
}

/// Serves shard ranges from memory; shards in `lost` fail, shards in
/// `corrupt` return flipped bytes.
struct Memory {
    shards: Vec<Bytes>,
    lost: HashSet<usize>,
    corrupt: HashSet<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("shard {0} is lost")]
struct Lost(usize);

impl ShardReader for Memory {
    type Error = Lost;

    async fn read(&self, shard: usize, offset: u64, len: usize) -> Result<Bytes, Lost> {
        if self.lost.contains(&shard) {
            return Err(Lost(shard));
        }
        let bytes = self.shards[shard].slice(offset as usize..offset as usize + len);
        if self.corrupt.contains(&shard) {
            return Ok(Bytes::from(bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>()));
        }
        Ok(bytes)
    }
}

#[test]
fn parity_of_the_stripe_encoder_equals_the_library_on_padded_shards() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let codec = Arc::new(Codec::new(4, 2).expect("codec"));
    let data: Vec<Bytes> = (0..4)
        .map(|_| {
            let mut d = vec![0u8; rng.random_range(1..10_000)];
            rng.fill_bytes(&mut d);
            Bytes::from(d)
        })
        .collect();
    let shards = encode_volume(&codec, &data, 777);
    let len = data.iter().map(|d| d.len()).max().expect("shards");
    let padded: Vec<Vec<u8>> = data
        .iter()
        .map(|d| {
            let mut p = d.to_vec();
            p.resize(len, 0);
            p
        })
        .collect();
    let slices: Vec<&[u8]> = padded.iter().map(|p| &p[..]).collect();
    let mut parity = vec![vec![0u8; len]; 2];
    codec.encode(&slices, &mut parity).expect("library encode");
    assert_eq!(&shards[4][..], &parity[0][..]);
    assert_eq!(&shards[5][..], &parity[1][..]);
}

#[test]
fn invalid_codes_and_wrong_lengths_are_refused() {
    assert!(Codec::new(0, 3).is_err());
    assert!(Codec::new(6, 0).is_err());
    assert!(Codec::new(30, 3).is_err());
    let codec = Arc::new(Codec::new(2, 1).expect("codec"));
    let mut encoder = StripeEncoder::new(codec, vec![10, 4], 8).expect("encoder");
    let err = encoder.encode_next(&[Bytes::from(vec![0u8; 8]), Bytes::from(vec![0u8; 8])]).expect_err("shard 1 holds 4");
    assert_eq!(err, ErasureError::WrongLength { shard: 1, expected: 4, got: 8 });
}

#[test]
fn a_call_the_library_refuses_names_the_operation_and_the_reason() {
    let codec = Codec::new(2, 1).expect("codec");
    let mut parity = vec![vec![0u8; 8]];
    let err = codec.encode(&[&[0u8; 8], &[0u8; 4]], &mut parity).expect_err("data shards of two lengths");
    assert_eq!(
        err,
        ErasureError::Library { op: CodecOp::Encode, source: reed_solomon_erasure::Error::IncorrectShardSize }
    );
    assert!(err.to_string().starts_with("coding library refused to encode parity: "), "{err}");
    let mut shards = vec![Some(vec![0u8; 8]), None, None];
    let err = codec.reconstruct_data(&mut shards).expect_err("one shard of a 2+1 code");
    assert_eq!(
        err,
        ErasureError::Library { op: CodecOp::ReconstructData, source: reed_solomon_erasure::Error::TooFewShardsPresent }
    );
}

#[tokio::test]
async fn every_record_of_a_lost_extent_is_read_back_from_any_k_survivors() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (k, m) = (6, 3);
    let codec = Arc::new(Codec::new(k, m).expect("codec"));
    let mut data = Vec::new();
    let mut keys = Vec::new();
    for i in 0..k {
        // Different record counts and sizes: shards of unequal length.
        let (file, file_keys) = sealed_extent(i as u64 + 1, &random_records(&mut rng, 3 + i * 2, 40_000));
        data.push(file);
        keys.push(file_keys);
    }
    let shards = encode_volume(&codec, &data, 64 * 1024);
    let shape = VolumeShape { data_sizes: data.iter().map(|d| d.len() as u64).collect(), parity: m };
    // Lost sets: all parity, all data but the wanted, mixed, and a corrupt survivor.
    let cases: Vec<(Vec<usize>, Vec<usize>)> =
        vec![(vec![0], vec![]), (vec![0, 1, 2], vec![]), (vec![2, 6, 8], vec![]), (vec![3, 4], vec![7]), (vec![5], vec![0])];
    for (lost, corrupt) in cases {
        let reader = Memory { shards: shards.clone(), lost: lost.iter().copied().collect(), corrupt: corrupt.iter().copied().collect() };
        for &want in lost.iter().filter(|&&s| s < k) {
            for key in &keys[want] {
                let got = read_record_degraded(&codec, &shape, &reader, want, key, 1 << 20)
                    .await
                    .unwrap_or_else(|e| panic!("lost {lost:?} corrupt {corrupt:?} shard {want}: {e}"));
                assert_eq!(Key::of(&got), *key);
            }
        }
    }
}

#[tokio::test]
async fn more_than_m_lost_is_an_error_not_wrong_bytes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let codec = Arc::new(Codec::new(4, 2).expect("codec"));
    let extents: Vec<(Bytes, Vec<Key>)> = (0..4).map(|i| sealed_extent(i, &random_records(&mut rng, 4, 5000))).collect();
    let data: Vec<Bytes> = extents.iter().map(|(d, _)| d.clone()).collect();
    let shards = encode_volume(&codec, &data, 4096);
    let shape = VolumeShape { data_sizes: data.iter().map(|d| d.len() as u64).collect(), parity: 2 };
    let reader = Memory { shards, lost: [0, 1, 4].into_iter().collect(), corrupt: HashSet::new() };
    let err = read_record_degraded(&codec, &shape, &reader, 0, &extents[0].1[0], 1 << 20).await.expect_err("3 of 6 lost");
    assert!(matches!(err, DegradedError::Erasure(ErasureError::TooFewShards { .. })), "{err}");
    // A key that the extent does not hold is reported as such.
    let reader = Memory { shards: reader.shards, lost: [0].into_iter().collect(), corrupt: HashSet::new() };
    let err = read_record_degraded(&codec, &shape, &reader, 0, &Key::of(b"absent"), 1 << 20).await.expect_err("absent");
    assert!(matches!(err, DegradedError::NotInIndex(_)), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any range of any data shard comes back from any k of the others.
    #[test]
    fn any_range_reconstructs_from_any_k_shards(
        seed in any::<u64>(),
        k in 1usize..7,
        m in 1usize..4,
        stripe in 1usize..5000,
        start in 0u64..6000,
        len in 1usize..6000,
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let codec = Arc::new(Codec::new(k, m).expect("codec"));
        let data: Vec<Bytes> = (0..k).map(|_| {
            let mut d = vec![0u8; rng.random_range(0..6000)];
            rng.fill_bytes(&mut d);
            Bytes::from(d)
        }).collect();
        let shards = encode_volume(&codec, &data, stripe);
        let shape = VolumeShape { data_sizes: data.iter().map(|d| d.len() as u64).collect(), parity: m };
        let want = rng.random_range(0..k);
        // Drop m shards, the wanted one among them.
        let mut lost: HashSet<usize> = [want].into_iter().collect();
        while lost.len() < m { lost.insert(rng.random_range(0..k + m)); }
        let pieces: Vec<Option<Bytes>> = (0..k + m).map(|s| {
            if lost.contains(&s) { return None; }
            let stored = shape.stored_len(s, start, len);
            Some(if stored == 0 { Bytes::new() } else { shards[s].slice(start as usize..start as usize + stored) })
        }).collect();
        let got = reconstruct_range(&codec, &shape, want, start, len, &pieces).expect("reconstruct");
        let expected_len = shape.stored_len(want, start, len);
        let expected = if expected_len == 0 { Bytes::new() } else { data[want].slice(start as usize..start as usize + expected_len) };
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn an_encoder_left_before_its_last_stripe_finishes_with_none_and_does_not_hang() {
    let codec = Arc::new(Codec::new(2, 1).expect("codec"));
    let data = [Bytes::from(vec![7u8; 3000]), Bytes::from(vec![9u8; 1000])];
    let mut encoder = StripeEncoder::new(codec, vec![3000, 1000], 1024).expect("encoder");
    let s = encoder.next_stripe().expect("a first stripe");
    let pieces: Vec<Bytes> = data.iter().map(|d| d.slice(0..s.len.min(d.len()))).collect();
    let parity = encoder.encode_next(&pieces).expect("encode");
    assert_eq!(parity.len(), 1);
    assert_eq!(parity[0].len(), 1024, "one parity piece as long as the stripe");
    assert!(encoder.finish().is_none(), "two stripes are still missing");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any shard, data or parity, rebuilt stripe by stripe from any k
    /// others, is byte-identical to the shard that was lost.
    #[test]
    fn any_lost_shard_is_rebuilt_from_any_k_others(seed in any::<u64>(), k in 1usize..6, m in 1usize..4, stripe in 1usize..5000) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let codec = Arc::new(Codec::new(k, m).expect("codec"));
        let data: Vec<Bytes> = (0..k)
            .map(|_| {
                let mut bytes = vec![0u8; rng.random_range(0..20_000)];
                rng.fill_bytes(&mut bytes);
                Bytes::from(bytes)
            })
            .collect();
        let shards = encode_volume(&codec, &data, 4096);
        let shape = VolumeShape { data_sizes: data.iter().map(|d| d.len() as u64).collect(), parity: m };
        let want = rng.random_range(0..k + m);
        // k survivors other than `want`, chosen at random.
        let mut others: Vec<usize> = (0..k + m).filter(|s| *s != want).collect();
        others.sort_by_key(|_| rng.random::<u32>());
        others.truncate(k);
        let mut rebuilt = Vec::new();
        let mut offset = 0u64;
        while offset < shape.shard_len() {
            let len = stripe.min((shape.shard_len() - offset) as usize);
            let pieces: Vec<Option<Bytes>> = (0..k + m)
                .map(|s| {
                    others.contains(&s).then(|| {
                        let stored = shape.stored_len(s, offset, len);
                        if stored == 0 { Bytes::new() } else { shards[s].slice(offset as usize..offset as usize + stored) }
                    })
                })
                .collect();
            rebuilt.extend_from_slice(&rebuild_range(&codec, &shape, want, offset, len, &pieces).expect("rebuild"));
            offset += len as u64;
        }
        prop_assert_eq!(rebuilt.len() as u64, shape.size_of(want));
        prop_assert!(rebuilt == shards[want], "shard {} of {}+{} differs", want, k, m);
    }
}

#[test]
fn rebuilding_with_fewer_than_k_pieces_is_an_error() {
    let codec = Codec::new(3, 2).expect("codec");
    let shape = VolumeShape { data_sizes: vec![10, 10, 10], parity: 2 };
    let pieces = vec![Some(Bytes::from(vec![0u8; 10])), None, None, Some(Bytes::from(vec![0u8; 10])), None];
    assert!(matches!(rebuild_range(&codec, &shape, 4, 0, 10, &pieces), Err(ErasureError::TooFewShards { needed: 3, available: 2 })));
    assert!(matches!(rebuild_range(&codec, &shape, 5, 0, 10, &pieces), Err(ErasureError::NoSuchShard(5))));
}
