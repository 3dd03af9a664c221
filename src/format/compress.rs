//! The optional compression of an encoded body; deterministic levels so a
//! retried batch compresses to the same bytes.

use super::Compression;
use std::io::Write;

/// The body, its `Content-Encoding` and the file-name suffix it adds.
pub fn compress(
    plain: Vec<u8>,
    compression: Compression,
) -> (Vec<u8>, Option<&'static str>, &'static str) {
    let (content_encoding, suffix) = naming(compression);
    let body = match compression {
        Compression::None => plain,
        _ => compress_slice(&plain, compression),
    };
    (body, content_encoding, suffix)
}

/// `Content-Encoding` and file-name suffix of a compression.
pub fn naming(compression: Compression) -> (Option<&'static str>, &'static str) {
    match compression {
        Compression::None => (None, ""),
        Compression::Gzip => (Some("gzip"), ".gz"),
        Compression::Zstd => (Some("zstd"), ".zst"),
    }
}

/// A compressed copy of `plain` (a copy of it for `None`).
pub fn compress_slice(plain: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => plain.to_vec(),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 4),
                flate2::Compression::new(6),
            );
            encoder.write_all(plain).expect("writing to memory");
            encoder.finish().expect("writing to memory")
        }
        Compression::Zstd => zstd::bulk::compress(plain, 3).expect("compressing in memory"),
    }
}
