//! The binary encoding of hit-index entries (the `hits` tree).
//!
//! A no-op re-run reads one entry per node, and decoding JSON (hex digests, field names,
//! the blob path of every stat) was half of that lookup's cost. Entries are derived data
//! (not journaled, remade from the records tree on the next hit), so their encoding is
//! private to this crate and may change: an entry that does not start with [`TAG`] (an
//! older JSON entry) is read as JSON, and an entry that cannot be read at all is treated as
//! absent by the caller, which then remakes it.
//!
//! Layout, integers little-endian: the tag byte; the number of outputs (u32), each as port
//! (string), digest (32 bytes), kind (string), dir (u8), size (u64); the number of stats
//! (u32), each as port (string), path (string), dev, ino, size (u64), mtime_ns and
//! ctime_ns (i128). A string is its length (u32) and its UTF-8 bytes.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::record::{Hit, OutputRef};
use crate::stat::StatKey;

/// First byte of a binary entry; JSON never starts with it.
pub(crate) const TAG: u8 = 0xB1;

/// Encodes `hit`.
pub(crate) fn encode(hit: &Hit) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + hit.outputs.len() * 200);
    out.push(TAG);
    put_u32(&mut out, hit.outputs.len());
    for (port, o) in &hit.outputs {
        put_str(&mut out, port);
        out.extend_from_slice(&o.digest.0);
        put_str(&mut out, &o.kind);
        out.push(u8::from(o.dir));
        out.extend_from_slice(&o.size.to_le_bytes());
    }
    put_u32(&mut out, hit.stats.len());
    for (port, s) in &hit.stats {
        put_str(&mut out, port);
        put_stat(&mut out, s);
    }
    out
}

/// Decodes an entry written by [`encode`]; the reason it cannot, if it cannot.
pub(crate) fn decode(bytes: &[u8]) -> Result<Hit, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(1)? != [TAG] {
        return Err("not a binary hit entry".into());
    }
    let mut outputs = BTreeMap::new();
    for _ in 0..r.u32()? {
        let port = r.string()?;
        let digest = Digest(r.take(32)?.try_into().expect("32 bytes"));
        let kind = r.string()?;
        let dir = match r.take(1)?[0] {
            0 => false,
            1 => true,
            b => return Err(format!("dir flag {b} is neither 0 nor 1")),
        };
        let size = r.u64()?;
        outputs.insert(
            port,
            OutputRef {
                digest,
                kind,
                dir,
                size,
            },
        );
    }
    let mut stats = BTreeMap::new();
    for _ in 0..r.u32()? {
        let port = r.string()?;
        stats.insert(port, r.stat()?);
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the entry", bytes.len() - r.at));
    }
    Ok(Hit { outputs, stats })
}

pub(crate) fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("fewer than 2^32 items in a hit entry");
    out.extend_from_slice(&n.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Appends a file stat: path (string), dev, ino, size (u64), mtime_ns and ctime_ns (i128).
pub(crate) fn put_stat(out: &mut Vec<u8>, s: &StatKey) {
    put_str(out, &s.path);
    out.extend_from_slice(&s.dev.to_le_bytes());
    out.extend_from_slice(&s.ino.to_le_bytes());
    out.extend_from_slice(&s.size.to_le_bytes());
    out.extend_from_slice(&s.mtime_ns.to_le_bytes());
    out.extend_from_slice(&s.ctime_ns.to_le_bytes());
}

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("the entry ends early (at byte {})", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub(crate) fn i128(&mut self) -> Result<i128, String> {
        Ok(i128::from_le_bytes(self.take(16)?.try_into().expect("16")))
    }

    /// A file stat written by [`put_stat`].
    pub(crate) fn stat(&mut self) -> Result<StatKey, String> {
        Ok(StatKey {
            path: self.string()?,
            dev: self.u64()?,
            ino: self.u64()?,
            size: self.u64()?,
            mtime_ns: self.i128()?,
            ctime_ns: self.i128()?,
        })
    }

    pub(crate) fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("a string at byte {} is not UTF-8", self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hit {
        let mut outputs = BTreeMap::new();
        for (port, dir, size) in [("out", false, 12), ("tree", true, 1 << 40), ("é", false, 0)] {
            outputs.insert(
                port.to_string(),
                OutputRef {
                    digest: Digest::of_bytes(port.as_bytes()),
                    kind: if dir { "dir" } else { "file" }.to_string(),
                    dir,
                    size,
                },
            );
        }
        let mut stats = BTreeMap::new();
        stats.insert(
            "out".to_string(),
            StatKey {
                path: "/w/.expflow/cas/ab/abcd".to_string(),
                dev: 2049,
                ino: u64::MAX,
                size: 12,
                mtime_ns: -5,
                ctime_ns: i128::MAX,
            },
        );
        Hit { outputs, stats }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(decode(&encode(&h)).unwrap(), h);
        let empty = Hit {
            outputs: BTreeMap::new(),
            stats: BTreeMap::new(),
        };
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn smaller_than_json() {
        let h = sample();
        assert!(encode(&h).len() < serde_json::to_vec(&h).unwrap().len());
    }

    #[test]
    fn refuses_damaged_entries() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(decode(&serde_json::to_vec(&sample()).unwrap()).is_err());
    }
}
