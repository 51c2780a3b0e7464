//! The scheduler's steps: deciding cached nodes, launching within `--jobs` and the declared
//! resources, finishing, retrying and failing nodes.

use super::*;

impl<E: Fn(EventKind)> Sched<'_, E> {
    /// A node whose inputs are all known: compute its key and use the cache, park it behind
    /// an identical in-flight node, or make it runnable.
    pub(super) fn decide(&mut self, i: usize) -> Result<()> {
        let mut work = vec![i];
        while let Some(i) = work.pop() {
            if self.stopping {
                continue;
            }
            if let Err(msg) = self.fetch_inputs_of(i, true) {
                self.fail(i, None, 1, msg);
                continue;
            }
            let inputs = match self.inputs_for(i) {
                Ok(m) => m,
                Err(msg) => {
                    self.fail(i, None, 1, msg);
                    continue;
                }
            };
            // The key from borrowed parts: the owned material (copies of the parameters,
            // lineage) is made only for a node that is not a hit.
            let key = match self.key_parts(i, &inputs) {
                Ok(parts) => parts.key(),
                Err(msg) => {
                    self.fail(i, None, 1, msg);
                    continue;
                }
            };
            self.keys[i] = Some(key);
            let node = &self.p.nodes[i];
            let hit = match self.checked.remove(&key) {
                Some(hit) => Some(hit),
                None => intact_hit(&self.env.cas, self.env.store.as_ref(), &key)?,
            };
            if let Some(hit) = hit {
                if self.last.get(node.name.as_str()) != Some(&key) {
                    self.env.store.set_last(&self.p.name, &node.name, &key)?;
                }
                (self.emit)(EventKind::NodeCached {
                    node: node.name.clone(),
                    key,
                });
                self.summary.cached.push(node.name.clone());
                self.outputs[i] = Some(hit.outputs);
                self.state[i] = State::Done;
                work.extend(self.release_children(i));
                continue;
            }
            self.material[i] = Some(self.material_from(i, inputs));
            if let Some(rec) = self.remote_lookup(i, &key) {
                let node = &self.p.nodes[i];
                (self.emit)(EventKind::NodeCached {
                    node: node.name.clone(),
                    key,
                });
                self.summary.cached.push(node.name.clone());
                self.summary.remote.push(node.name.clone());
                self.outputs[i] = Some(rec.outputs.clone());
                self.remote_hits.insert(i, rec);
                self.state[i] = State::Done;
                work.extend(self.release_children(i));
                continue;
            }
            if self.opts.fetch_only {
                let name = self.p.nodes[i].name.clone();
                (self.emit)(EventKind::NodeSkipped {
                    node: name.clone(),
                    reason: "in neither the local nor the remote cache".into(),
                });
                self.summary.skipped.push(name);
                self.state[i] = State::Skipped;
                self.skip_descendants(i);
                continue;
            }
            if self.inflight.contains_key(&key) {
                self.parked.entry(key).or_default().push(i);
                self.state[i] = State::Parked;
                continue;
            }
            self.inflight.insert(key, i);
            self.state[i] = State::Runnable;
            self.runnable.insert(i);
        }
        Ok(())
    }

    fn release_children(&mut self, i: usize) -> Vec<usize> {
        let mut ready = Vec::new();
        for &c in &self.children[i] {
            if self.state[c] == State::Waiting {
                self.waiting_on[c] -= 1;
                if self.waiting_on[c] == 0 {
                    ready.push(c);
                }
            }
        }
        ready
    }

    /// The digest of every input of node `i`, by port.
    fn inputs_for(&self, i: usize) -> std::result::Result<BTreeMap<String, Digest>, String> {
        let node = &self.p.nodes[i];
        let mut inputs = BTreeMap::new();
        for (port, src) in &node.inputs {
            let d = match src {
                Source::Input(name) => self.inputs.get(name).map(|(d, _)| *d),
                Source::Node {
                    node: up,
                    port: up_port,
                } => self.outputs[*up]
                    .as_ref()
                    .and_then(|o| o.get(up_port))
                    .map(|o| o.digest),
                Source::Gather {
                    nodes: ups,
                    port: up_port,
                } => {
                    let mut pts = Vec::new();
                    for up in ups {
                        let Some(out) = self.outputs[*up].as_ref().and_then(|o| o.get(up_port))
                        else {
                            return Err(format!(
                                "input `{port}`: `{}.{up_port}` is not available",
                                self.p.nodes[*up].name
                            ));
                        };
                        pts.push(crate::gather::Point {
                            node: &self.p.nodes[*up].name,
                            matrix: &self.p.nodes[*up].point,
                            output: out,
                        });
                    }
                    let (d, _) = crate::gather::store(&self.env.cas, &pts)
                        .map_err(|e| format!("input `{port}`: cannot gather the points: {e}"))?;
                    Some(d)
                }
            };
            inputs.insert(
                port.clone(),
                d.ok_or_else(|| format!("input `{port}` is not available"))?,
            );
        }
        Ok(inputs)
    }

    /// What node `i`'s key is made of, given its inputs. The operator's environment is
    /// determined once per kind and run.
    fn key_parts<'s>(
        &'s mut self,
        i: usize,
        inputs: &'s BTreeMap<String, Digest>,
    ) -> std::result::Result<KeyParts<'s>, String> {
        let node = &self.p.nodes[i];
        let kind = node.op.kind();
        if !self.env_cache.contains_key(kind) {
            let env = node
                .op
                .environment()
                .map_err(|e| format!("cannot determine the environment of `{kind}`: {e}"))?;
            self.env_cache.insert(kind, env);
        }
        Ok(KeyParts {
            schema: KEY_SCHEMA,
            op: kind,
            op_version: node.op.version(),
            params: &node.params,
            inputs,
            outputs: &node.outputs,
            env: &self.env_cache[kind],
            seed: seed_of(node),
            metrics: &node.metrics,
        })
    }

    /// The whole key material of node `i` (recorded with its outputs when it executes).
    fn material_from(&self, i: usize, inputs: BTreeMap<String, Digest>) -> KeyMaterial {
        let kind = self.p.nodes[i].op.kind();
        material(
            self.p,
            i,
            inputs,
            self.env_cache[kind].clone(),
            self.input_types(i),
        )
    }

    fn input_types(&self, i: usize) -> BTreeMap<String, PortType> {
        self.p.nodes[i]
            .inputs
            .iter()
            .map(|(port, src)| {
                let ty = match src {
                    Source::Input(name) => {
                        self.inputs.get(name).map_or(PortType::File, |(_, t)| *t)
                    }
                    Source::Node { node, port } => self.p.nodes[*node]
                        .outputs
                        .get(port)
                        .copied()
                        .unwrap_or(PortType::File),
                    Source::Gather { .. } => PortType::Dir,
                };
                (port.clone(), ty)
            })
            .collect()
    }

    /// Starts runnable nodes while jobs and resources allow (lowest index first; a node that
    /// does not fit now is passed over for later ones, up to a bounded look-ahead).
    pub(super) fn launch(&mut self, tx: &mpsc::UnboundedSender<Finished>) {
        let mut passed = Vec::new();
        while passed.len() < 256 {
            let Some(i) = self.runnable.pop_first() else {
                break;
            };
            // Cluster nodes: the cluster's scheduler packs them; submitted in batches.
            if self.remote.is_remote(i) {
                self.start(i, 1, Vec::new(), tx);
                continue;
            }
            if self.running - self.remote.running() >= self.opts.jobs.max(1) {
                passed.push(i);
                continue;
            }
            let r = self.p.nodes[i].resources;
            if r.gpus as usize > self.opts.gpus.len() {
                let msg = format!(
                    "needs {} GPU(s) but {} are available; set CUDA_VISIBLE_DEVICES (or EXPFLOW_GPUS) to the GPUs expflow may use",
                    r.gpus,
                    self.opts.gpus.len()
                );
                let key = self.keys[i];
                self.fail(i, key, 1, msg);
                continue;
            }
            let cpus = r.cpus.min(self.opts.cpus.max(1));
            let mem = r.mem_gb.min(self.opts.mem_gb);
            // A node alone on the machine always fits (its request was capped above).
            let fits = self.running == 0
                || (self.used_cpus + cpus <= self.opts.cpus.max(1)
                    && self.used_mem + mem <= self.opts.mem_gb);
            if !fits || self.free_gpus.len() < r.gpus as usize {
                passed.push(i);
                continue;
            }
            if let Err(msg) = self.fetch_inputs_of(i, false) {
                let key = self.keys[i];
                self.fail(i, key, 1, msg);
                continue;
            }
            self.used_cpus += cpus;
            self.used_mem += mem;
            let gpus: Vec<u32> = self.free_gpus.drain(..r.gpus as usize).collect();
            self.held_gpus.insert(i, gpus.clone());
            self.start(i, 1, gpus, tx);
        }
        self.runnable.extend(passed);
    }

    fn start(
        &mut self,
        i: usize,
        attempt: u32,
        gpus: Vec<u32>,
        tx: &mpsc::UnboundedSender<Finished>,
    ) {
        let material = self.material[i]
            .clone()
            .expect("material is computed before a node runs");
        let key = self.keys[i].expect("keys are computed with the material");
        self.inflight.insert(key, i);
        self.state[i] = State::Running;
        self.running += 1;
        let node = self.p.nodes[i].clone();
        (self.emit)(EventKind::NodeStarted {
            node: node.name.clone(),
            key,
            attempt,
        });
        if self.remote.is_remote(i) {
            self.remote.enqueue(i, attempt);
            return;
        }
        let env = self.env.clone();
        let types = self.input_types(i);
        let tx = tx.clone();
        let progress = self.progress_fn(&node.name);
        let delay = if attempt > 1 {
            (self.opts.retry_base * 2u32.pow((attempt - 2).min(10))).min(Duration::from_secs(30))
        } else {
            Duration::ZERO
        };
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = tokio::task::spawn_blocking(move || {
                if env.cancel.is_cancelled() {
                    return Err("cancelled".to_string());
                }
                node::execute(
                    &env, &node, &material, &key, &types, gpus, attempt, progress, true,
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("worker panicked: {e}")));
            let _ = tx.send(Finished {
                idx: i,
                attempt,
                result,
            });
        });
    }

    fn progress_fn(&self, node: &str) -> ProgressFn {
        let node = node.to_string();
        let observer = self.opts.observer.clone();
        let last = Mutex::new(Instant::now() - Duration::from_secs(1));
        let log = self.events.clone();
        Arc::new(move |p: &crate::context::Progress| {
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            if p.done < p.total && l.elapsed() < Duration::from_millis(200) {
                return;
            }
            *l = Instant::now();
            let ev = EventKind::NodeProgress {
                node: node.clone(),
                done: p.done,
                total: p.total,
                unit: p.unit.clone(),
                detail: p.detail.clone(),
            };
            if let Some(o) = &observer {
                o(&ev);
            }
            log.emit(ev);
        })
    }

    pub(super) fn finish(
        &mut self,
        f: Finished,
        tx: &mpsc::UnboundedSender<Finished>,
    ) -> Result<()> {
        let i = f.idx;
        let name = self.p.nodes[i].name.clone();
        let key = self.keys[i].expect("running nodes have keys");
        match f.result {
            Ok(done) => {
                self.release(i);
                self.inflight.remove(&key);
                (self.emit)(EventKind::NodeExecuted {
                    node: name.clone(),
                    key,
                    duration_ms: done.duration_ms,
                    outputs: done
                        .outputs
                        .iter()
                        .map(|(k, o)| (k.clone(), o.digest))
                        .collect(),
                    memo_hits: done.memo.0,
                    memo_misses: done.memo.1,
                    notes: done.notes,
                });
                self.summary.executed.push(name);
                self.outputs[i] = Some(done.outputs);
                self.state[i] = State::Done;
                let mut next = self.release_children(i);
                if let Some(parked) = self.parked.remove(&key) {
                    next.extend(parked);
                }
                for c in next {
                    self.decide(c)?;
                }
            }
            Err(msg) => {
                let cancelled = self.env.cancel.is_cancelled();
                let retries = self.p.nodes[i].retries;
                let will_retry = !cancelled && !self.stopping && f.attempt <= retries;
                (self.emit)(EventKind::NodeFailed {
                    node: name.clone(),
                    key: Some(key),
                    attempt: f.attempt,
                    will_retry,
                    error: msg.clone(),
                });
                if will_retry {
                    self.running -= 1;
                    let gpus = self.held_gpus.get(&i).cloned().unwrap_or_default();
                    self.start(i, f.attempt + 1, gpus, tx);
                    return Ok(());
                }
                self.release(i);
                self.inflight.remove(&key);
                self.summary.failed.push(name.clone());
                self.summary.errors.push((name, msg));
                self.state[i] = State::Failed;
                self.after_failure(i, key);
            }
        }
        Ok(())
    }

    pub(super) fn release(&mut self, i: usize) {
        self.running -= 1;
        if self.remote.is_remote(i) {
            return;
        }
        let r = self.p.nodes[i].resources;
        self.used_cpus = self
            .used_cpus
            .saturating_sub(r.cpus.min(self.opts.cpus.max(1)));
        self.used_mem = (self.used_mem - r.mem_gb.min(self.opts.mem_gb)).max(0.0);
        if let Some(g) = self.held_gpus.remove(&i) {
            self.free_gpus.extend(g);
            self.free_gpus.sort_unstable();
        }
    }

    fn fail(&mut self, i: usize, key: Option<Digest>, attempt: u32, msg: String) {
        let name = self.p.nodes[i].name.clone();
        (self.emit)(EventKind::NodeFailed {
            node: name.clone(),
            key,
            attempt,
            will_retry: false,
            error: msg.clone(),
        });
        self.summary.failed.push(name.clone());
        self.summary.errors.push((name, msg));
        self.state[i] = State::Failed;
        if let Some(k) = key {
            self.after_failure(i, k);
        } else if !self.opts.keep_going {
            self.stopping = true;
        } else {
            self.skip_descendants(i);
        }
    }

    fn after_failure(&mut self, i: usize, key: Digest) {
        self.inflight.remove(&key);
        // Nodes parked behind this one would fail the same way; they become runnable so
        // that each reports its own error (under keep-going) or are skipped (under stop).
        if let Some(mut parked) = self.parked.remove(&key) {
            // The first one takes over the key; the rest stay parked behind it.
            parked.sort_unstable();
            let first = parked.remove(0);
            self.inflight.insert(key, first);
            self.state[first] = State::Runnable;
            self.runnable.insert(first);
            if !parked.is_empty() {
                self.parked.insert(key, parked);
            }
        }
        if self.opts.keep_going {
            self.skip_descendants(i);
        } else {
            self.stopping = true;
        }
    }

    fn skip_descendants(&mut self, i: usize) {
        let mut stack = self.children[i].clone();
        while let Some(c) = stack.pop() {
            if matches!(
                self.state[c],
                State::Waiting | State::Runnable | State::Parked
            ) {
                self.state[c] = State::Skipped;
                self.runnable.remove(&c);
                (self.emit)(EventKind::NodeSkipped {
                    node: self.p.nodes[c].name.clone(),
                    reason: format!("upstream {} failed", self.p.nodes[i].name),
                });
                self.summary.skipped.push(self.p.nodes[c].name.clone());
                stack.extend(self.children[c].iter().copied());
            }
        }
    }
}
