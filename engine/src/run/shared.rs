//! The scheduler's use of a shared cache (`run --remote NAME`, `pull`): a local miss is
//! looked up remotely; a remote hit counts as cached and gives its output digests to the
//! nodes downstream, and its blobs are downloaded only when something reads them: a node
//! that executes (its inputs), a gather (its points), the end of the run (targets and
//! `outputs:`), or every hit under `pull`. A record enters the local store only once all its
//! blobs are in the local CAS.

use super::*;

impl<E: Fn(EventKind)> Sched<'_, E> {
    /// The shared cache's record for node `i` (key `key`), when there is a cache and it has
    /// one. A cache that cannot be reached is a warning and a miss: the node executes.
    pub(super) fn remote_lookup(&self, i: usize, key: &Digest) -> Option<expflow_cache::Record> {
        let shared = self.opts.shared.as_ref()?;
        match shared.find(key) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    "remote {}: cannot look up {} ({}): {e}; treating it as a miss",
                    shared.name(),
                    self.p.nodes[i].name,
                    key.short()
                );
                None
            }
        }
    }

    /// Downloads the blobs of remote hit `i` (if it is one and they are not down yet) and
    /// stores its record locally.
    pub(super) fn fetch_hit(&mut self, i: usize) -> std::result::Result<(), String> {
        let Some(rec) = self.remote_hits.remove(&i) else {
            return Ok(());
        };
        let shared = self
            .opts
            .shared
            .clone()
            .expect("remote hits come from a shared cache");
        let name = self.p.nodes[i].name.clone();
        let got = shared.fetch(&rec, &self.env.cas).map_err(|e| {
            format!(
                "cannot download the outputs of {name} from remote {}: {e}",
                shared.name()
            )
        })?;
        tracing::info!(
            node = %name,
            blobs = got.blobs,
            bytes = got.bytes,
            "downloaded from remote {}",
            shared.name()
        );
        let stored = self
            .env
            .store
            .put_record(&rec)
            .and_then(|()| self.env.store.set_last(&self.p.name, &name, &rec.key));
        stored.map_err(|e| format!("cannot store the record of {name}: {e}"))?;
        self.summary.fetched.push(name);
        Ok(())
    }

    /// Downloads the remote hits whose outputs node `i` reads (`gathers_only`: only those
    /// it gathers, which its key needs).
    pub(super) fn fetch_inputs_of(
        &mut self,
        i: usize,
        gathers_only: bool,
    ) -> std::result::Result<(), String> {
        if self.remote_hits.is_empty() {
            return Ok(());
        }
        let mut ups = Vec::new();
        for src in self.p.nodes[i].inputs.values() {
            match src {
                Source::Node { node, .. } if !gathers_only => ups.push(*node),
                Source::Gather { nodes, .. } => ups.extend(nodes.iter().copied()),
                _ => {}
            }
        }
        for up in ups {
            self.fetch_hit(up)?;
        }
        Ok(())
    }

    /// At the end of a successful run: downloads the remote hits the user asked for (the
    /// targets, or the selection's final nodes), those `outputs:` materialises, and under
    /// `pull` every one. A failed download fails its node.
    pub(super) fn fetch_needed(&mut self, selected: &[usize]) {
        if self.remote_hits.is_empty() {
            return;
        }
        let mut needed: BTreeSet<usize> = BTreeSet::new();
        if self.opts.fetch_only {
            needed.extend(self.remote_hits.keys().copied());
        } else {
            let chosen: BTreeSet<usize> = selected.iter().copied().collect();
            for &i in selected {
                let node = &self.p.nodes[i];
                let targeted = self
                    .opts
                    .targets
                    .iter()
                    .any(|t| *t == node.name || *t == node.base);
                let sink = !self.children[i].iter().any(|c| chosen.contains(c));
                if targeted || (self.opts.targets.is_empty() && sink) {
                    needed.insert(i);
                }
            }
            needed.extend(self.p.outputs.iter().map(|(_, i, _)| *i));
        }
        for i in needed {
            if let Err(msg) = self.fetch_hit(i) {
                let name = self.p.nodes[i].name.clone();
                (self.emit)(EventKind::NodeFailed {
                    node: name.clone(),
                    key: self.keys[i],
                    attempt: 1,
                    will_retry: false,
                    error: msg.clone(),
                });
                self.summary.failed.push(name.clone());
                self.summary.errors.push((name, msg));
                self.state[i] = State::Failed;
            }
        }
    }
}
