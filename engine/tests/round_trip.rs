//! restore(backup(x)) == x, over random sparse disks: data runs of random bytes, runs of
//! zeros that are allocated, and holes, at random (often unaligned) offsets and sizes,
//! read as a raw file (SEEK_DATA walk, O_DIRECT) and as a stream, with one worker and
//! with several. Every case then also backs up a second time and must add no chunk.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use engine::backup::{backup, inputs_of, BackupOptions};
use engine::restore::{restore_disk, RestoreRequest, RestoreTo, TargetFormat, TargetOptions};
use engine::source::SourceOptions;
use proptest::prelude::*;
use repo_format::{ChunkerParams, RepoConfig, Repository};

/// One piece of the disk, in order: random data, allocated zeros, or a hole.
#[derive(Clone, Debug)]
enum Piece {
    Data(u32, u64),
    Zeros(u32),
    Hole(u32),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (1u32..300_000, any::<u64>()).prop_map(|(n, seed)| Piece::Data(n, seed)),
        (1u32..200_000).prop_map(Piece::Zeros),
        (1u32..2_000_000).prop_map(Piece::Hole),
    ]
}

/// Writes the pieces to `path`; returns the disk's bytes.
fn write_disk(path: &Path, pieces: &[Piece]) -> Vec<u8> {
    let mut f = std::fs::File::create(path).unwrap();
    let mut want = Vec::new();
    for p in pieces {
        match *p {
            Piece::Data(n, seed) => {
                let mut x = seed | 1;
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                f.write_all(&bytes).unwrap();
                want.extend_from_slice(&bytes);
            }
            Piece::Zeros(n) => {
                f.write_all(&vec![0; n as usize]).unwrap();
                want.resize(want.len() + n as usize, 0);
            }
            Piece::Hole(n) => {
                f.seek(SeekFrom::Current(n as i64)).unwrap();
                want.resize(want.len() + n as usize, 0);
            }
        }
    }
    f.set_len(want.len() as u64).unwrap();
    want
}

fn round_trip(pieces: &[Piece], workers: usize, stream: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let chunker = ChunkerParams {
        min_bytes: 4096,
        avg_bytes: 16384,
        max_bytes: 65536,
        zero_run_min_bytes: 4096,
        ..ChunkerParams::default()
    };
    let config = RepoConfig::new(chunker, Default::default(), 1 << 20).unwrap();
    let repo = Repository::init(dir.path().join("repo"), config).unwrap();
    let disk = dir.path().join("disk.raw");
    let want = write_disk(&disk, pieces);
    let opts = BackupOptions {
        name: "vm".into(),
        tags: vec![],
        workers,
        cancel: Default::default(),
        allow_empty: true,
        time: None,
    };
    let lock = repo.lock_shared("test").unwrap();
    let mut ids = Vec::new();
    for night in 0..2 {
        let (disks, meta) = if stream {
            let source = engine::source::StreamSource::new(
                std::fs::File::open(&disk).unwrap(),
                "stream".into(),
            );
            (
                vec![engine::backup::DiskInput {
                    label: "vda".into(),
                    source: Box::new(source),
                    incremental: None,
                }],
                vec![],
            )
        } else {
            let o = SourceOptions {
                direct: true,
                ..Default::default()
            };
            inputs_of(engine::source::open(disk.to_str().unwrap(), Some("vda"), &o).unwrap())
        };
        let done = backup(
            &repo,
            &lock,
            disks,
            meta,
            &opts,
            &engine::progress::NoProgress,
        )
        .unwrap();
        if night == 1 {
            prop_assert_eq!(
                done.snapshot.disks[0].stats.new_chunks,
                0,
                "the same disk again adds nothing"
            );
        }
        ids.push(done);
    }
    let done = &ids[0];
    let target = dir.path().join("restored.raw");
    let req = RestoreRequest {
        snapshot: &done.id,
        label: "vda",
        manifest: &done.snapshot.disks[0].manifest,
        target: RestoreTo::Path(&target),
        target_opts: TargetOptions {
            force: false,
            mode: 0o600,
        },
        format: TargetFormat::Raw,
        workers,
        cancel: &Default::default(),
    };
    restore_disk(&repo, &lock, &req, &engine::progress::NoProgress).unwrap();
    let got = std::fs::read(&target).unwrap();
    prop_assert_eq!(got.len(), want.len());
    prop_assert!(got == want, "restored bytes differ");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn restore_of_backup_is_the_disk(
        pieces in prop::collection::vec(piece(), 0..24),
        workers in 1usize..4,
        stream in any::<bool>(),
    ) {
        round_trip(&pieces, workers, stream)?;
    }
}
