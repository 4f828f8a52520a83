//! Arbitrary bytes as everything an NBD client sends: the handshake, option haggling and
//! transmission requests, served from a real repository with one small disk. The server
//! must answer or close, never panic, and bound what it allocates (issue 11).
#![no_main]
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use engine::access::nbd::{Export, Exports};
use libfuzzer_sys::fuzz_target;

/// A client connection: reads come from the input, writes are counted and dropped.
struct Client<'a> {
    input: &'a [u8],
    written: usize,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len();
        assert!(self.written < 1 << 30, "the server wrote over 1 GiB");
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn exports() -> Arc<Exports> {
    // The folder lives in the static too (a leaked one would be reported as a leak).
    static STATE: OnceLock<(tempfile::TempDir, Arc<Exports>)> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("repo");
            let config =
                repo_format::RepoConfig::new(Default::default(), Default::default(), 8 << 20)
                    .unwrap();
            let repo = Arc::new(repo_format::Repository::init(&root, config).unwrap());
            let mut disk = vec![0u8; 3 << 20];
            for (i, b) in disk.iter_mut().enumerate().take(1 << 20) {
                *b = (i * 7 % 251) as u8;
            }
            let source =
                engine::source::StreamSource::new(std::io::Cursor::new(disk), "fuzz".into());
            let opts = engine::backup::BackupOptions {
                name: "vm".into(),
                tags: vec![],
                workers: 1,
                cancel: Default::default(),
                allow_empty: false,
                time: None,
            };
            let lock = repo.lock_shared("fuzz").unwrap();
            let done = engine::backup::backup(
                &repo,
                &lock,
                vec![engine::backup::DiskInput {
                    label: "vda".into(),
                    source: Box::new(source),
                    incremental: None,
                }],
                vec![],
                &opts,
                &engine::progress::NoProgress,
            )
            .unwrap();
            let export = Export {
                name: "vm@x:vda".into(),
                aliases: vec![],
                manifest: done.snapshot.disks[0].manifest,
            };
            let exports = Arc::new(Exports::new(repo, lock, vec![export]));
            (dir, exports)
        })
        .1
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let _ = engine::access::nbd::serve_client(
        exports(),
        Client {
            input: data,
            written: 0,
        },
    );
});
