//! sha256 while bytes stream through (building blobs, materialising and verifying files), so
//! no file is read twice.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes through to `inner`, hashing what was written.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
        }
    }
    pub fn finish(self) -> (W, Vec<u8>) {
        (self.inner, self.hasher.finalize().to_vec())
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hex sha256 of everything `r` yields.
pub fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
    let mut w = Sha256Writer::new(std::io::sink());
    std::io::copy(&mut r, &mut w)?;
    Ok(hex(&w.finish().1))
}
