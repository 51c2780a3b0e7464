//! BLAKE3 digests of bytes, readers and files. A digest is plain BLAKE3 (no key, no
//! derivation context), so `b3sum` computes the same value for any blob.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CacheError, IoContext, Result};

/// Files at least this large are hashed on all cores.
pub const PARALLEL_HASH_THRESHOLD: u64 = 16 * 1024 * 1024;

/// Buffer size for streaming reads and copies.
pub(crate) const IO_BUF: usize = 256 * 1024;

/// A 32-byte BLAKE3 digest. Printed and serialised as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Digest> {
        let bad = |reason| CacheError::BadDigest {
            text: text.to_string(),
            reason,
        };
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(bad("wrong length"));
        }
        // A table lookup per character, one check for the whole digest (records hold many
        // digests: this is on the path of every record and run read).
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (HEX_VAL[pair[0] as usize], HEX_VAL[pair[1] as usize]);
            invalid |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        if invalid & 0x80 != 0 {
            return Err(bad("not a hex character"));
        }
        Ok(Digest(out))
    }

    /// The first 12 hex characters, for messages and listings.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

/// The value of each hex character; 0x80 for every other byte.
const HEX_VAL: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        t[b'A' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct HexVisitor;
        impl serde::de::Visitor<'_> for HexVisitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-character hex BLAKE3 digest")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Digest, E> {
                Digest::from_hex(v).map_err(E::custom)
            }
        }
        d.deserialize_str(HexVisitor)
    }
}

/// Digest and length of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CacheError::io("cannot read", "<reader>", e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

/// Digest and size of the file at `path`, read with plain reads (never memory-mapped, so a
/// file truncated meanwhile cannot crash the process). Files of 16 MiB or more are hashed on
/// all cores, 16 MiB at a time, while the next chunk is read. A file whose size or mtime
/// changed while it was read, or that yielded fewer or more bytes than its size, is
/// [`CacheError::ChangedWhileRead`].
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    hash_open_file(open_regular(path)?, path)
}

/// Opens `path` for reading if it is a regular file (checked first, so that a FIFO is an
/// error rather than a read that blocks forever).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).ctx("cannot stat", path)?;
    if !meta.is_file() {
        return Err(CacheError::NotAFile {
            path: path.to_path_buf(),
            found: crate::walk::kind_name(&meta.file_type()),
        });
    }
    File::open(path).ctx("cannot open", path)
}

/// What must not change while a file is read: its size and modification time.
#[derive(Debug, PartialEq, Eq)]
struct ReadStamp {
    size: u64,
    mtime_ns: i128,
}

impl ReadStamp {
    fn of(file: &File, path: &Path) -> Result<ReadStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ctx("cannot stat", path)?;
        Ok(ReadStamp {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Hashes an already opened regular file (see [`hash_file`]).
pub(crate) fn hash_open_file(mut file: File, path: &Path) -> Result<(Digest, u64)> {
    hash_opened(&mut file, path)
}

/// Hashes the regular file `file` (open at its start; left at its end), checking that it
/// did not change while it was read.
pub(crate) fn hash_opened(file: &mut File, path: &Path) -> Result<(Digest, u64)> {
    let before = ReadStamp::of(file, path)?;
    let mut hasher = blake3::Hasher::new();
    if before.size >= PARALLEL_HASH_THRESHOLD {
        hash_chunks_parallel(file, path, &mut hasher)?;
    } else {
        // A small file needs no large buffer (one byte more than its size sees the end).
        let cap = usize::try_from(before.size)
            .map_or(IO_BUF, |n| n.saturating_add(1))
            .min(IO_BUF);
        let mut buf = vec![0u8; cap];
        loop {
            let n = read_full(file, &mut buf).ctx("cannot read", path)?;
            hasher.update(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
    }
    let read = hasher.count();
    let after = ReadStamp::of(file, path)?;
    if after != before || read != before.size {
        return Err(CacheError::ChangedWhileRead {
            path: path.to_path_buf(),
            size_before: before.size,
            read,
            size_after: after.size,
        });
    }
    Ok((hasher.finalize().into(), read))
}

/// Chunk size of [`hash_chunks_parallel`].
const CHUNK: usize = 16 * 1024 * 1024;

/// Feeds `file` to `hasher` in 16 MiB chunks: one thread reads the next chunk while the
/// current one is hashed on all cores (two buffers in flight).
fn hash_chunks_parallel(file: &mut File, path: &Path, hasher: &mut blake3::Hasher) -> Result<()> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        // Cannot fail: the receiver is alive and there is room for both.
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<()> {
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_full(file, &mut buf)?;
                let last = n < buf.len();
                if n > 0 && full_tx.send((buf, n)).is_err() {
                    break;
                }
                if last {
                    break;
                }
            }
            Ok(())
        });
        for (buf, n) in full_rx {
            hasher.update_rayon(&buf[..n]);
            // The reader may have stopped already; then the buffer is simply dropped.
            let _ = empty_tx.send(buf);
        }
        match reader.join() {
            Ok(read) => read.ctx("cannot read", path),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // Values printed by `b3sum` (BLAKE3 reference) for these inputs.
    const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    const ABC: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";

    #[test]
    fn known_blake3_values() {
        assert_eq!(Digest::of_bytes(b"").to_hex(), EMPTY);
        assert_eq!(Digest::of_bytes(b"abc").to_hex(), ABC);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            Digest::of_bytes(&big).0,
            *blake3::hash(&big).as_bytes(),
            "must be plain BLAKE3, as b3sum computes it"
        );
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(Digest::from_hex(&ABC.to_uppercase()).unwrap(), d);
        assert_eq!(d.short(), "6437b3ac3846");
        assert_eq!(format!("{d}"), ABC);
        assert_eq!(format!("{d:?}"), ABC);
        assert!(Digest::from_hex(&ABC[..63]).is_err());
        let mut bad = ABC.to_string();
        bad.replace_range(10..11, "g");
        let err = Digest::from_hex(&bad).unwrap_err().to_string();
        assert!(err.contains("not a hex character"), "{err}");
    }

    #[test]
    fn serde_is_a_hex_string() {
        let d = Digest::of_bytes(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{ABC}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    #[test]
    fn hash_file_small_large_empty() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert_eq!(
            hash_file(&empty).unwrap(),
            (Digest::from_hex(EMPTY).unwrap(), 0)
        );

        let small = dir.path().join("small");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(
            hash_file(&small).unwrap(),
            (Digest::from_hex(ABC).unwrap(), 3)
        );

        // Just over the threshold, so the chunked parallel path runs (a partial last chunk).
        let len = PARALLEL_HASH_THRESHOLD as usize + 12_345;
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let large = dir.path().join("large");
        File::create(&large).unwrap().write_all(&data).unwrap();
        let (d, n) = hash_file(&large).unwrap();
        assert_eq!(n, len as u64);
        assert_eq!(d, Digest::of_bytes(&data));
        assert_eq!(hash_reader(&data[..]).unwrap(), (d, len as u64));
    }

    #[test]
    fn hash_file_rejects_directories_and_names_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = hash_file(dir.path()).unwrap_err();
        assert!(matches!(err, CacheError::NotAFile { .. }), "{err}");
        let missing = dir.path().join("nope");
        let err = hash_file(&missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
