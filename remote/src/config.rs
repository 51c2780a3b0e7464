//! The workspace's remotes: `.expflow/remotes.json`, written by `expflow remote add`. It
//! holds names, URLs and endpoints only; credentials come from the standard `AWS_*`
//! environment variables when a remote is opened and are never written anywhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{RemoteError, Result};

/// One remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    pub name: String,
    /// `s3://bucket[/prefix]` or `file:///absolute/dir`.
    pub url: String,
    /// An S3-compatible server's endpoint (`http://127.0.0.1:8333`); plain HTTP is allowed
    /// for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    S3 { bucket: String, prefix: String },
    File { dir: PathBuf },
}

impl RemoteSpec {
    /// Checks the name, URL and endpoint; the error says what to write instead.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(RemoteError::Usage(format!(
                "remote name {:?}: use lower-case letters, digits, `-` and `_`",
                self.name
            )));
        }
        self.location()?;
        if let Some(ep) = &self.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(RemoteError::Usage(format!(
                    "--endpoint {ep}: write the server's URL, e.g. http://127.0.0.1:8333"
                )));
            }
            if ep.contains('@') {
                return Err(RemoteError::Usage(format!(
                    "--endpoint {ep}: credentials do not belong in the endpoint; set \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
                )));
            }
            if matches!(self.location()?, Location::File { .. }) {
                return Err(RemoteError::Usage(format!(
                    "--endpoint is for s3:// remotes; {} is a local directory",
                    self.url
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn location(&self) -> Result<Location> {
        let url = self.url.as_str();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains('@') || bucket.contains(':') {
                return Err(RemoteError::Usage(format!(
                    "remote URL {url}: write s3://BUCKET/PREFIX (credentials come from \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never the URL)"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(RemoteError::Usage(format!(
                    "remote URL {url}: a file:// remote needs an absolute path, e.g. \
                     file:///srv/expflow-cache"
                )));
            }
            return Ok(Location::File {
                dir: PathBuf::from(rest),
            });
        }
        Err(RemoteError::Usage(format!(
            "remote URL {url}: expflow supports s3://BUCKET/PREFIX (AWS or any S3-compatible \
             server with --endpoint) and file:///DIR"
        )))
    }
}

/// The remotes of one workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remotes {
    pub remotes: Vec<RemoteSpec>,
}

impl Remotes {
    fn path(ws_root: &Path) -> PathBuf {
        ws_root.join("remotes.json")
    }

    /// Reads the remotes of the workspace at `ws_root` (none if the file is absent).
    pub fn load(ws_root: &Path) -> Result<Remotes> {
        let path = Self::path(ws_root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Remotes::default()),
            Err(e) => return Err(RemoteError::io("cannot read", path, e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            RemoteError::Usage(format!(
                "{}: {e}; fix the file or remove it and add the remotes again with `expflow remote add`",
                path.display()
            ))
        })
    }

    /// Writes the file atomically (temp file and rename).
    pub fn save(&self, ws_root: &Path) -> Result<()> {
        std::fs::create_dir_all(ws_root)
            .map_err(|e| RemoteError::io("cannot create directory", ws_root, e))?;
        let path = Self::path(ws_root);
        let tmp = ws_root.join("remotes.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("plain data encodes") + "\n";
        std::fs::write(&tmp, text).map_err(|e| RemoteError::io("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RemoteError::io("cannot write", &path, e))
    }

    /// The remote called `name`; the error lists the ones there are.
    pub fn get(&self, name: &str) -> Result<&RemoteSpec> {
        self.remotes.iter().find(|r| r.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.remotes.iter().map(|r| r.name.as_str()).collect();
            RemoteError::Usage(if known.is_empty() {
                format!("no remote named {name}: add one with `expflow remote add {name} URL`")
            } else {
                format!(
                    "no remote named {name} (this workspace has: {}); add it with `expflow remote add {name} URL`",
                    known.join(", ")
                )
            })
        })
    }

    /// Adds `spec`; a name already in use is an error.
    pub fn add(&mut self, spec: RemoteSpec) -> Result<()> {
        spec.validate()?;
        if self.remotes.iter().any(|r| r.name == spec.name) {
            return Err(RemoteError::Usage(format!(
                "a remote named {} exists already; remove it first with `expflow remote remove {}`",
                spec.name, spec.name
            )));
        }
        self.remotes.push(spec);
        self.remotes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Removes the remote called `name`.
    pub fn remove(&mut self, name: &str) -> Result<RemoteSpec> {
        self.get(name)?;
        let i = self
            .remotes
            .iter()
            .position(|r| r.name == name)
            .expect("found above");
        Ok(self.remotes.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, endpoint: Option<&str>) -> RemoteSpec {
        RemoteSpec {
            name: "team".into(),
            url: url.into(),
            endpoint: endpoint.map(str::to_string),
        }
    }

    #[test]
    fn urls_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(
            spec("s3://cache/team/a/", None).location().unwrap(),
            Location::S3 {
                bucket: "cache".into(),
                prefix: "team/a".into()
            }
        );
        let err = spec("s3://AKIA:secret@cache", None).validate().unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
        let err = spec("file://rel/dir", None).validate().unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = spec("gs://b", None).validate().unwrap_err();
        assert!(err.to_string().contains("s3://"), "{err}");
        let err = spec("s3://b", Some("127.0.0.1:8333"))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn add_remove_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Remotes::load(dir.path()).unwrap();
        r.add(spec("s3://cache/x", Some("http://127.0.0.1:1")))
            .unwrap();
        assert!(r.add(spec("file:///tmp/x", None)).is_err());
        r.save(dir.path()).unwrap();
        let mut back = Remotes::load(dir.path()).unwrap();
        assert_eq!(back, r);
        back.remove("team").unwrap();
        assert!(
            back.get("team")
                .unwrap_err()
                .to_string()
                .contains("remote add team")
        );
    }
}
