//! Signing keys: the user's ed25519 key pair and the public keys they trust, under the
//! user's config directory (`$EXPFLOW_CONFIG_DIR`, else `$XDG_CONFIG_HOME/expflow`, else
//! `~/.config/expflow`):
//! - `signing.key`: the private seed (hex), mode 0600;
//! - `signing.pub`: `expflow-ed25519 <64 hex> <label>`, the line to hand to a team mate;
//! - `trusted/<id>.pub`: keys added with `expflow keys trust FILE`.
//!
//! The user's own key is always trusted.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::error::{RemoteError, Result};

const PUB_TAG: &str = "expflow-ed25519";

/// The user's config directory for expflow.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EXPFLOW_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("expflow");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config").join("expflow")
}

/// A public key with the label its owner gave it (`user@host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub bytes: [u8; 32],
    pub label: String,
}

impl PublicKey {
    /// The first 16 hex characters: how records and messages name the signer.
    pub fn id(&self) -> String {
        hex(&self.bytes)[..16].to_string()
    }

    pub fn to_hex(&self) -> String {
        hex(&self.bytes)
    }

    /// `expflow-ed25519 <hex> <label>`.
    pub fn to_line(&self) -> String {
        format!("{PUB_TAG} {} {}", self.to_hex(), self.label)
    }

    /// Parses what [`PublicKey::to_line`] wrote; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PublicKey> {
        let bad = |reason: &str| RemoteError::Key {
            path: path.to_path_buf(),
            reason: format!(
                "{reason}; a public key file is one line `{PUB_TAG} <64 hex> <label>`, as \
                 `expflow keys generate` writes to signing.pub"
            ),
        };
        let mut parts = text.trim().splitn(3, ' ');
        if parts.next() != Some(PUB_TAG) {
            return Err(bad("not an expflow public key"));
        }
        let bytes = parts
            .next()
            .and_then(unhex32)
            .ok_or_else(|| bad("the key is not 64 hex characters"))?;
        let label = parts.next().unwrap_or("").trim().to_string();
        Ok(PublicKey { bytes, label })
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(msg, sig)
            .is_ok()
    }
}

/// The user's key pair.
pub struct KeyPair {
    pair: Ed25519KeyPair,
    pub public: PublicKey,
}

impl KeyPair {
    fn private_path(dir: &Path) -> PathBuf {
        dir.join("signing.key")
    }

    fn public_path(dir: &Path) -> PathBuf {
        dir.join("signing.pub")
    }

    /// Loads the key pair in `dir`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<KeyPair>> {
        let path = Self::private_path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RemoteError::io("cannot read", path, e)),
        };
        let seed = unhex32(text.trim()).ok_or_else(|| RemoteError::Key {
            path: path.clone(),
            reason: "not a private key (64 hex characters); move it away and run `expflow keys generate`".into(),
        })?;
        let label = fs::read_to_string(Self::public_path(dir))
            .ok()
            .and_then(|t| PublicKey::parse(&t, &Self::public_path(dir)).ok())
            .map(|p| p.label)
            .unwrap_or_else(default_label);
        Self::from_seed(&seed, label, &path).map(Some)
    }

    fn from_seed(seed: &[u8; 32], label: String, path: &Path) -> Result<KeyPair> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| RemoteError::Key {
            path: path.to_path_buf(),
            reason: format!("not a usable ed25519 key ({e})"),
        })?;
        let bytes: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("ed25519 public keys are 32 bytes");
        Ok(KeyPair {
            pair,
            public: PublicKey { bytes, label },
        })
    }

    /// Creates a new key pair in `dir` (the private key with mode 0600). An existing key is
    /// an error: replacing it would orphan every record it signed.
    pub fn generate(dir: &Path) -> Result<KeyPair> {
        fs::create_dir_all(dir).map_err(|e| RemoteError::io("cannot create directory", dir, e))?;
        let path = Self::private_path(dir);
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| RemoteError::Key {
                path: path.clone(),
                reason: "the system's random number generator failed".into(),
            })?;
        let kp = Self::from_seed(&seed, default_label(), &path)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    RemoteError::Key {
                        path: path.clone(),
                        reason: "a key exists already (records it signed are trusted by it); \
                                 keep it, or move it away first to make a new one"
                            .into(),
                    }
                } else {
                    RemoteError::io("cannot create", &path, e)
                }
            })?;
        // The umask cannot widen 0600, but a pre-set ACL default could: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| RemoteError::io("cannot set permissions of", &path, e))?;
        f.write_all(format!("{}\n", hex(&seed)).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| RemoteError::io("cannot write", &path, e))?;
        let pub_path = Self::public_path(dir);
        fs::write(&pub_path, kp.public.to_line() + "\n")
            .map_err(|e| RemoteError::io("cannot write", &pub_path, e))?;
        Ok(kp)
    }

    /// The key in `dir`, created on first use.
    pub fn load_or_generate(dir: &Path) -> Result<(KeyPair, bool)> {
        match Self::load(dir)? {
            Some(k) => Ok((k, false)),
            None => Ok((Self::generate(dir)?, true)),
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// The keys whose records a workspace accepts: the user's own and those in `trusted/`.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Key id → key.
    keys: BTreeMap<String, PublicKey>,
    own: Option<String>,
}

impl Trust {
    /// The user's own key (if generated) and every key in `dir/trusted/`. A damaged file in
    /// `trusted/` is an error naming it.
    pub fn load(dir: &Path) -> Result<Trust> {
        let mut t = Trust::default();
        if let Some(kp) = KeyPair::load(dir)? {
            t.own = Some(kp.public.id());
            t.keys.insert(kp.public.id(), kp.public);
        }
        let tdir = dir.join("trusted");
        let entries = match fs::read_dir(&tdir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(t),
            Err(e) => return Err(RemoteError::io("cannot list", tdir, e)),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| RemoteError::io("cannot list", &tdir, e))?
                .path();
            if path.extension().is_none_or(|e| e != "pub") {
                continue;
            }
            let text =
                fs::read_to_string(&path).map_err(|e| RemoteError::io("cannot read", &path, e))?;
            let k = PublicKey::parse(&text, &path)?;
            t.keys.entry(k.id()).or_insert(k);
        }
        Ok(t)
    }

    /// Adds the public key in `file` to `dir/trusted/`; returns it.
    pub fn add_file(dir: &Path, file: &Path) -> Result<PublicKey> {
        let text = fs::read_to_string(file).map_err(|e| RemoteError::io("cannot read", file, e))?;
        let k = PublicKey::parse(&text, file)?;
        let tdir = dir.join("trusted");
        fs::create_dir_all(&tdir)
            .map_err(|e| RemoteError::io("cannot create directory", &tdir, e))?;
        let dest = tdir.join(format!("{}.pub", k.id()));
        fs::write(&dest, k.to_line() + "\n")
            .map_err(|e| RemoteError::io("cannot write", &dest, e))?;
        Ok(k)
    }

    /// The trusted key with these bytes.
    pub fn get(&self, bytes: &[u8; 32]) -> Option<&PublicKey> {
        self.keys.values().find(|k| k.bytes == *bytes)
    }

    /// Every trusted key, with whether it is the user's own.
    pub fn list(&self) -> Vec<(&PublicKey, bool)> {
        self.keys
            .values()
            .map(|k| (k, self.own.as_deref() == Some(k.id().as_str())))
            .collect()
    }

    /// The id of the user's own key.
    pub fn own_id(&self) -> Option<&str> {
        self.own.as_deref()
    }
}

fn default_label() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "user".into());
    format!("{user}@{}", expflow_engine::node::hostname())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_signs_trusts_itself_and_keeps_the_private_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let kp = KeyPair::generate(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            KeyPair::generate(dir.path()).is_err(),
            "an existing key is never replaced"
        );
        let sig = kp.sign(b"record");
        assert!(kp.public.verifies(b"record", &sig));
        assert!(!kp.public.verifies(b"recorD", &sig));
        let again = KeyPair::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.public, kp.public);
        let trust = Trust::load(dir.path()).unwrap();
        assert_eq!(trust.own_id(), Some(kp.public.id().as_str()));
        assert!(trust.get(&kp.public.bytes).is_some());
    }

    #[test]
    fn trusting_a_team_mates_key() {
        let me = tempfile::tempdir().unwrap();
        let mate = tempfile::tempdir().unwrap();
        KeyPair::generate(me.path()).unwrap();
        let theirs = KeyPair::generate(mate.path()).unwrap();
        assert!(
            Trust::load(me.path())
                .unwrap()
                .get(&theirs.public.bytes)
                .is_none()
        );
        let added = Trust::add_file(me.path(), &mate.path().join("signing.pub")).unwrap();
        assert_eq!(added, theirs.public);
        let trust = Trust::load(me.path()).unwrap();
        assert!(trust.get(&theirs.public.bytes).is_some());
        assert_eq!(trust.list().len(), 2);
        let junk = me.path().join("junk.pub");
        fs::write(&junk, "ssh-ed25519 AAAA").unwrap();
        let err = Trust::add_file(me.path(), &junk).unwrap_err().to_string();
        assert!(
            err.contains("junk.pub") && err.contains("expflow-ed25519"),
            "{err}"
        );
    }
}
