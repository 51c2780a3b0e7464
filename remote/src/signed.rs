//! A record as a remote stores it: the record's JSON text, signed with ed25519 by the key
//! that pushed it. The signature covers a domain tag and the exact text, so a record
//! changed after signing (or copied under another node key) is rejected.

use expflow_cache::{Digest, Record};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyPair, PublicKey, Trust, hex, unhex};

const FORMAT: &str = "expflow-signed-record-1";
const DOMAIN: &[u8] = b"expflow signed record v1\n";

/// The JSON object at `records/<key>/<signer id>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub format: String,
    /// The signer's public key (hex).
    pub signer: String,
    /// The signer's label (`user@host`), for messages only.
    pub signer_label: String,
    /// ed25519 signature (hex) of the domain tag followed by `record`.
    pub signature: String,
    /// The record's JSON text.
    pub record: String,
}

/// Why a remote record is not used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Not a signed record, or its record text does not parse.
    Malformed(String),
    /// The signature does not verify: changed after signing, or damaged.
    BadSignature { signer: String },
    /// Signed correctly by a key this user does not trust.
    Untrusted { signer: String },
    /// A valid record of another node key, stored under this one.
    WrongKey { signer: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Malformed(why) => write!(f, "not a signed expflow record ({why})"),
            Rejection::BadSignature { signer } => write!(
                f,
                "its signature by {signer} does not verify (the record was changed after it was signed, or damaged)"
            ),
            Rejection::Untrusted { signer } => write!(
                f,
                "it is signed by {signer}, whose key this user does not trust (add it with `expflow keys trust FILE`)"
            ),
            Rejection::WrongKey { signer } => {
                write!(f, "it is signed by {signer} but describes another node key")
            }
        }
    }
}

impl Envelope {
    /// Signs `rec` with `key`.
    pub fn sign(rec: &Record, key: &KeyPair) -> Envelope {
        let record = serde_json::to_string(rec).expect("records encode");
        let signature = hex(&key.sign(&message(&record)));
        Envelope {
            format: FORMAT.into(),
            signer: key.public.to_hex(),
            signer_label: key.public.label.clone(),
            signature,
            record,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("plain data encodes")
    }

    /// The record in `bytes`, if it is signed by a trusted key and describes node key `key`.
    pub fn open(
        bytes: &[u8],
        key: &Digest,
        trust: &Trust,
    ) -> Result<(Record, PublicKey), Rejection> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed(e.to_string()))?;
        if env.format != FORMAT {
            return Err(Rejection::Malformed(format!("format {:?}", env.format)));
        }
        let signer_bytes: [u8; 32] = unhex(&env.signer)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Rejection::Malformed("the signer is not a 64-hex key".into()))?;
        let claimed = PublicKey {
            bytes: signer_bytes,
            label: env.signer_label.clone(),
        };
        let signer = format!("{} ({})", claimed.label, claimed.id());
        let sig = unhex(&env.signature).unwrap_or_default();
        if !claimed.verifies(&message(&env.record), &sig) {
            return Err(Rejection::BadSignature { signer });
        }
        let Some(trusted) = trust.get(&signer_bytes) else {
            return Err(Rejection::Untrusted { signer });
        };
        let rec: Record = serde_json::from_str(&env.record)
            .map_err(|e| Rejection::Malformed(format!("the record does not parse: {e}")))?;
        if rec.key != *key {
            return Err(Rejection::WrongKey { signer });
        }
        Ok((rec, trusted.clone()))
    }
}

fn message(record: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(record.as_bytes());
    m
}
