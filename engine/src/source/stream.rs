//! A raw disk arriving as a stream (`xe vdi-export ... | dedisk backup -`): read once,
//! in order, size unknown until the end.

use std::io::Read;
use std::path::PathBuf;

use super::{DiskSource, SourceError};

pub struct StreamSource<R> {
    reader: R,
    name: String,
    pos: u64,
}

impl<R: Read + Send> StreamSource<R> {
    pub fn new(reader: R, name: String) -> Self {
        StreamSource {
            reader,
            name,
            pos: 0,
        }
    }
}

impl<R: Read + Send> DiskSource for StreamSource<R> {
    fn random_access(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn size_bytes(&self) -> Option<u64> {
        None
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        Ok(Some((offset, u64::MAX)))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        assert_eq!(offset, self.pos, "streams are read in order");
        // Whole buffers: the chunker wants whole blocks.
        let done = super::read_full(&mut self.reader, buf).map_err(|source| SourceError::Io {
            path: PathBuf::from(&self.name),
            source,
        })?;
        self.pos += done as u64;
        Ok(done)
    }
}
