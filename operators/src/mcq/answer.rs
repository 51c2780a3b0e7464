//! `mcq.answer`: answers multiple-choice items (A–D) with an inference-time strategy and
//! writes one prediction per item, in input order.
//!
//! Every strategy scores the options first: the probability of each letter as the reply's
//! first token after the item's prompt (one forward pass natively; `logprobs` /
//! `top_logprobs` of a one-token request to an OpenAI-compatible server), renormalised over
//! A–D, with its entropy and margin as the item's uncertainty. Then, by `strategy`:
//! - `choice_prob`: the most probable letter;
//! - `direct`: a short greedy reply, its letter read by `mac::extract_answer`;
//! - `self_consistency`: `n` sampled chain-of-thought replies (seeded per item), majority
//!   vote, ties broken by the option probabilities;
//! - `verify`: the direct answer, then a second prompt asks whether that option is right;
//!   items whose probability of "Yes" is below `threshold` are asked again with chain of
//!   thought;
//! - `describe_then_answer`: the model describes the image(s) first, then answers from the
//!   description and the options as text (MAC's DAD, spec §1.5, with one model).
//!
//! A reply without a letter falls back to the most probable letter, so `pred` is always one of
//! A–D; `parsed` says where it came from (`text`, `fallback`, `probability`).
//!
//! Cost per item: `tokens` (generated) and `calls` (forward passes and generation requests,
//! `n` per sampled request). Wall-clock seconds are figures about one execution, so they are
//! notes (`seconds`, `seconds.<task>`: `expflow log NODE` and the node's event), never part
//! of an output, whose bytes are a function of the node's key.
//!
//! Declared nondeterministic, since a remote server promises nothing; on the native runtime
//! every output is reproducible (greedy, or sampled with a seed derived from `sampling_seed` and the
//! item id alone).

use std::time::Instant;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, Sampling};
use serde_json::{Map, Value, json};

use super::items::{McItem, read, text_messages};
use super::predictions::{Pred, metrics, table};
use super::{LETTER_TEXTS, Scorer, argmax, vote};
use crate::error::{OperatorError, Result};
use crate::infer::backend::{Backend, ChatReq};
use crate::infer::openai::client_params;
use crate::infer::{BackendKind, open_backend};
use crate::mac::{LETTERS, extract_answer};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct Answer;

const KIND: &str = "mcq.answer";

pub const STRATEGIES: [&str; 5] = [
    "direct",
    "choice_prob",
    "self_consistency",
    "verify",
    "describe_then_answer",
];

const COT: &str = "Think step by step about each option, then give your final answer on the last line as `Answer: X`, where X is A, B, C or D.";
const VERIFY: &str =
    "Is option {letter} the correct answer to the question above? Reply with Yes or No.";
const DESCRIBE_I2T: &str = "Do not answer yet. First describe the cover image faithfully and in detail: what it shows, its objects, colours and any text on it.";
const DESCRIBE_T2I: &str = "Do not answer yet. First describe each of the four images faithfully, one paragraph each, starting with `Image A:`, `Image B:`, `Image C:` and `Image D:`.";
const DEDUCE: &str = "A description of the image(s), which may contain mistakes:\n{description}\n\nUsing the description, answer the question.";

struct Config {
    strategy: &'static str,
    system_in_user: bool,
    n: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    threshold: f64,
    max_tokens: usize,
    answer_tokens: usize,
    top_logprobs: usize,
    cot: String,
    verify: String,
    describe_i2t: String,
    describe_t2i: String,
    deduce: String,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let bad = |name: &str, why: String| OperatorError::param(KIND, name, why);
        let n = p.u64("n")?;
        if n == 0 || n > 16 {
            return Err(bad("n", format!("is {n}; use 1 to 16")));
        }
        let temperature = p.f64("temperature")?;
        if !(0.0..=2.0).contains(&temperature) {
            return Err(bad("temperature", format!("is {temperature}; use 0 to 2")));
        }
        let top_p = p.f64("top_p")?;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad("top_p", format!("is {top_p}; use a value in (0, 1]")));
        }
        let threshold = p.f64("threshold")?;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(bad(
                "threshold",
                format!("is {threshold}; use a probability in [0, 1]"),
            ));
        }
        let tokens = |name: &str| -> Result<usize> {
            match p.u64(name)? {
                0 => Err(bad(name, "is 0; use at least 1".into())),
                v => Ok(v as usize),
            }
        };
        let top_logprobs = p.u64("top_logprobs")?;
        if top_logprobs == 0 {
            return Err(bad(
                "top_logprobs",
                "is 0; the server must return alternatives (vLLM allows up to --max-logprobs, 20 by default)".into(),
            ));
        }
        let verify = p.str("verify_prompt")?.to_string();
        if !verify.contains("{letter}") {
            return Err(bad(
                "verify_prompt",
                "has no `{letter}`; it must name the option being checked".into(),
            ));
        }
        let deduce = p.str("deduce_prompt")?.to_string();
        if !deduce.contains("{description}") {
            return Err(bad(
                "deduce_prompt",
                "has no `{description}`; it must carry the first stage's description".into(),
            ));
        }
        Ok(Config {
            strategy: p.choice("strategy", &STRATEGIES)?,
            system_in_user: p.choice("system_as", &["system", "user"])? == "user",
            n: n as usize,
            temperature,
            top_p,
            seed: p.u64("sampling_seed")?,
            threshold,
            max_tokens: tokens("max_tokens")?,
            answer_tokens: tokens("answer_tokens")?,
            top_logprobs: top_logprobs as usize,
            cot: p.str("cot_prompt")?.to_string(),
            verify,
            describe_i2t: p.str("describe_prompt_image2text")?.to_string(),
            describe_t2i: p.str("describe_prompt_text2image")?.to_string(),
            deduce,
        })
    }
}

fn check_all(map: &Map<String, Value>) -> Result<()> {
    BackendKind::parse(KIND, map)?;
    Config::parse(map)?;
    Ok(())
}

/// The sampling seed of one item: from `sampling_seed` and the item id alone, so an item's samples do
/// not depend on the other items or their order.
pub fn item_seed(seed: u64, id: &str) -> u64 {
    let r = crate::mac::rank(seed, &[b"mcq.answer", id.as_bytes()]);
    u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]])
}

/// The state of a run: items, their predictions so far, and the backend.
struct Run<'a> {
    ctx: &'a Context,
    backend: &'a dyn Backend,
    cfg: &'a Config,
    items: &'a [McItem],
    preds: Vec<Pred>,
}

impl Run<'_> {
    fn names(&self, idx: &[usize], stage: &str) -> Vec<String> {
        idx.iter()
            .map(|&i| format!("item `{}` ({stage})", self.items[i].id))
            .collect()
    }

    /// Runs `f` over the items `idx` and shares its wall time among them.
    fn timed<T>(
        &mut self,
        idx: &[usize],
        f: impl FnOnce(&Self) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let started = Instant::now();
        let out = f(self)?;
        let share = started.elapsed().as_secs_f64() / idx.len().max(1) as f64;
        for &i in idx {
            self.preds[i].seconds += share;
        }
        Ok(out)
    }

    /// Choice probabilities of the letters for the conversations of `idx`.
    fn score(
        &mut self,
        idx: &[usize],
        convs: Vec<Vec<ChatMessage>>,
        candidates: &[&str],
        stage: &str,
    ) -> Result<Vec<Vec<f64>>, OpError> {
        let names = self.names(idx, stage);
        for &i in idx {
            self.preds[i].calls += 1;
        }
        self.timed(idx, |r| {
            Scorer {
                backend: r.backend,
                top_logprobs: r.cfg.top_logprobs,
            }
            .score(r.ctx, &convs, candidates, &names)
        })
    }

    /// Replies to the conversations of `idx` (`sampling.seed` replaced per item); the
    /// generated tokens are counted to each item.
    fn generate(
        &mut self,
        idx: &[usize],
        convs: Vec<Vec<ChatMessage>>,
        sampling: &Sampling,
        stage: &str,
    ) -> Result<Vec<Vec<String>>, OpError> {
        let names = self.names(idx, stage);
        for &i in idx {
            self.preds[i].calls += sampling.n as u64;
        }
        let reqs: Vec<ChatReq> = idx
            .iter()
            .zip(convs)
            .map(|(&i, messages)| ChatReq {
                messages,
                sampling: Sampling {
                    seed: item_seed(self.cfg.seed, &self.items[i].id),
                    ..sampling.clone()
                },
                send_seed: true,
                keep_special: false,
            })
            .collect();
        self.ctx.log(&format!("{stage}: {} prompt(s)", reqs.len()));
        let replies = self.timed(idx, |r| {
            if reqs.is_empty() {
                return Ok(Vec::new());
            }
            r.backend.chat(r.ctx, &reqs, &names)
        })?;
        Ok(idx
            .iter()
            .zip(replies)
            .map(|(&i, r)| {
                self.preds[i].tokens += r.completion_tokens;
                r.choices.into_iter().map(|c| c.text).collect()
            })
            .collect())
    }

    fn greedy(&self, max_tokens: usize) -> Sampling {
        Sampling {
            temperature: 0.0,
            max_new_tokens: max_tokens,
            ..Sampling::default()
        }
    }

    fn base(&self, i: usize, extra: Option<&str>) -> Vec<ChatMessage> {
        self.items[i].messages(self.cfg.system_in_user, extra)
    }

    /// Sets each item's distribution from `convs`.
    fn set_probs(&mut self, idx: &[usize], convs: Vec<Vec<ChatMessage>>) -> Result<(), OpError> {
        let ps = self.score(idx, convs, &LETTER_TEXTS, "choice probabilities")?;
        for (&i, p) in idx.iter().zip(ps) {
            self.preds[i].pred = argmax(&p);
            self.preds[i].parsed = "probability";
            self.preds[i].p = p;
        }
        Ok(())
    }

    /// A short greedy answer to each conversation; its letter, else the probability fallback.
    fn answer_directly(
        &mut self,
        idx: &[usize],
        convs: Vec<Vec<ChatMessage>>,
    ) -> Result<(), OpError> {
        let sampling = self.greedy(self.cfg.answer_tokens);
        let texts = self.generate(idx, convs, &sampling, "direct answer")?;
        for (&i, t) in idx.iter().zip(texts) {
            let text = t.into_iter().next().unwrap_or_default();
            self.settle(i, extract_answer(&text), text);
        }
        Ok(())
    }

    /// The letter read from a reply, else the most probable one.
    fn settle(&mut self, i: usize, letter: Option<usize>, response: String) {
        let p = &mut self.preds[i];
        match letter {
            Some(l) => (p.pred, p.parsed) = (l, "text"),
            None => (p.pred, p.parsed) = (argmax(&p.p), "fallback"),
        }
        p.response = response;
    }

    fn run(&mut self) -> Result<(), OpError> {
        let all: Vec<usize> = (0..self.items.len()).collect();
        let cfg = self.cfg;
        if cfg.strategy == "describe_then_answer" {
            return self.describe_then_answer(&all);
        }
        let base: Vec<_> = all.iter().map(|&i| self.base(i, None)).collect();
        self.set_probs(&all, base.clone())?;
        match cfg.strategy {
            "choice_prob" => Ok(()),
            "direct" => self.answer_directly(&all, base),
            "self_consistency" => {
                let convs = all.iter().map(|&i| self.base(i, Some(&cfg.cot))).collect();
                let sampling = Sampling {
                    temperature: cfg.temperature,
                    top_p: cfg.top_p,
                    n: cfg.n,
                    max_new_tokens: cfg.max_tokens,
                    ..Sampling::default()
                };
                let texts = self.generate(&all, convs, &sampling, "chain-of-thought samples")?;
                for (&i, samples) in all.iter().zip(texts) {
                    let letters: Vec<Option<usize>> =
                        samples.iter().map(|s| extract_answer(s)).collect();
                    let chosen = vote(&letters, &self.preds[i].p);
                    self.settle(i, chosen, serde_json::to_string(&samples)?);
                }
                Ok(())
            }
            _ => self.verify(&all, base),
        }
    }

    fn verify(&mut self, all: &[usize], base: Vec<Vec<ChatMessage>>) -> Result<(), OpError> {
        let cfg = self.cfg;
        self.answer_directly(all, base.clone())?;
        let checks: Vec<Vec<ChatMessage>> = all
            .iter()
            .zip(base)
            .map(|(&i, mut m)| {
                let letter = LETTERS[self.preds[i].pred].to_string();
                m.push(ChatMessage::text("assistant", &letter));
                m.push(ChatMessage::text(
                    "user",
                    &cfg.verify.replace("{letter}", &letter),
                ));
                m
            })
            .collect();
        let yes = self.score(all, checks, &["Yes", "No"], "verification")?;
        let mut again = Vec::new();
        for (&i, p) in all.iter().zip(yes) {
            self.preds[i].confidence = Some(p[0]);
            if p[0] < cfg.threshold {
                again.push(i);
            }
        }
        let convs = again
            .iter()
            .map(|&i| self.base(i, Some(&cfg.cot)))
            .collect();
        let sampling = self.greedy(cfg.max_tokens);
        let texts = self.generate(&again, convs, &sampling, "chain of thought after doubt")?;
        for (&i, t) in again.iter().zip(texts) {
            let text = t.into_iter().next().unwrap_or_default();
            self.preds[i].reasked = true;
            if let Some(l) = extract_answer(&text) {
                self.settle(i, Some(l), text);
            }
        }
        Ok(())
    }

    fn describe_then_answer(&mut self, all: &[usize]) -> Result<(), OpError> {
        let cfg = self.cfg;
        let describe: Vec<_> = all
            .iter()
            .map(|&i| {
                let prompt = if self.items[i].task == "text2image" {
                    &cfg.describe_t2i
                } else {
                    &cfg.describe_i2t
                };
                self.base(i, Some(prompt))
            })
            .collect();
        let sampling = self.greedy(cfg.max_tokens);
        let descriptions = self.generate(all, describe, &sampling, "description")?;
        let second: Vec<Vec<ChatMessage>> = all
            .iter()
            .zip(&descriptions)
            .map(|(&i, d)| {
                let it = &self.items[i];
                let d = d.first().map(String::as_str).unwrap_or("");
                let user = format!(
                    "{}\n\n{}",
                    cfg.deduce.replace("{description}", d.trim()),
                    it.text_only()
                );
                text_messages(&it.system, &user, cfg.system_in_user)
            })
            .collect();
        self.set_probs(all, second.clone())?;
        self.answer_directly(all, second)?;
        for (&i, d) in all.iter().zip(descriptions) {
            let p = &mut self.preds[i];
            p.response = format!(
                "{}\n\n{}",
                d.into_iter().next().unwrap_or_default(),
                p.response
            );
        }
        Ok(())
    }
}

impl Operator for Answer {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s =
            |name, v: &str, doc| ParamSpec::with_default(name, ParamKind::String, json!(v), doc);
        let i = |name, v: i64, doc| ParamSpec::with_default(name, ParamKind::Int, json!(v), doc);
        let f = |name, v: f64, doc| ParamSpec::with_default(name, ParamKind::Float, json!(v), doc);
        let mut params = vec![
            ParamSpec::required(
                "backend",
                ParamKind::String,
                "openai (an OpenAI-compatible server with logprobs) or native (the `model` input)",
            ),
            ParamSpec::with_default(
                "model",
                ParamKind::String,
                Value::Null,
                "openai: the model's name at the server",
            ),
            s(
                "media",
                "file_url",
                "openai: how images are sent: file_url, data_url, swift, none",
            ),
            i("batch_size", 8, "native: prompts per generate call"),
            s(
                "strategy",
                "direct",
                "direct, choice_prob, self_consistency, verify or describe_then_answer",
            ),
            s(
                "system_as",
                "user",
                "user: the system text joins the user turn (LLaMA-Factory's alpaca mapping); system: a system message",
            ),
            i(
                "n",
                5,
                "self_consistency: sampled chain-of-thought replies per item",
            ),
            f("temperature", 0.7, "self_consistency: sampling temperature"),
            f("top_p", 1.0, "self_consistency: nucleus mass"),
            i(
                "sampling_seed",
                0,
                "each item samples with a seed from (sampling_seed, id)",
            ),
            f(
                "threshold",
                0.6,
                "verify: items whose probability of Yes is below this are asked again with chain of thought",
            ),
            i(
                "max_tokens",
                512,
                "tokens of chain-of-thought replies and descriptions",
            ),
            i("answer_tokens", 16, "tokens of a direct answer"),
            i(
                "top_logprobs",
                20,
                "openai: alternatives asked for the first token (vLLM: at most --max-logprobs)",
            ),
            s(
                "cot_prompt",
                COT,
                "appended to the question for chain-of-thought replies",
            ),
            s(
                "verify_prompt",
                VERIFY,
                "verify: the check, `{letter}` the chosen option",
            ),
            s(
                "describe_prompt_image2text",
                DESCRIBE_I2T,
                "describe_then_answer: first stage for image2text items",
            ),
            s(
                "describe_prompt_text2image",
                DESCRIBE_T2I,
                "describe_then_answer: first stage for text2image items",
            ),
            s(
                "deduce_prompt",
                DEDUCE,
                "describe_then_answer: second stage, before the item's text without images; `{description}`",
            ),
        ];
        params.extend(client_params(false));
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "items",
                    PortType::Table,
                    "multiple-choice items (id, task, system, input, images, answer)",
                ),
                Port::new("model", PortType::Model, "native: the model directory").optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory relative image paths are in",
                )
                .optional(),
                Port::new(
                    "endpoint",
                    PortType::Dir,
                    "openai: a serve.model endpoint, its servers started for this node (instead of base_url)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "predictions",
                    PortType::Table,
                    "id, task, answer, pred (A-D), correct, parsed, p_A..p_D, entropy, margin, strategy, tokens, calls, confidence, reasked, response",
                ),
                Port::new(
                    "metrics",
                    PortType::Metrics,
                    "accuracy, counts (fallback, reasked), tokens, per task",
                ),
            ]),
            params,
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        let native = params.get("backend").and_then(Value::as_str) == Some("native");
        let sampled = params.get("strategy").and_then(Value::as_str) == Some("self_consistency");
        match (native, sampled) {
            (false, _) => Determinism::Nondeterministic,
            (true, false) => Determinism::Deterministic,
            (true, true) => Determinism::Seeded,
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(check_all(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("items")?.path)?;
        let media = ctx.inputs().get("media").map(|m| m.path.clone());
        let items = read(KIND, &df, media.as_deref())?;
        let backend = open_backend(ctx, KIND)?;
        let mut run = Run {
            ctx,
            backend: backend.as_ref(),
            cfg: &cfg,
            items: &items,
            preds: vec![Pred::default(); items.len()],
        };
        if !items.is_empty() {
            run.run()?;
        }
        let preds = run.preds;
        let mut out = table(&items, &preds, cfg.strategy)?;
        write_table(&mut out, &ctx.output("predictions")?.path)?;
        let m = metrics(&items, &preds, cfg.strategy);
        ctx.log(&format!("metrics: {m}"));
        // Wall time: a figure about this execution (the memo may have answered), so a note.
        ctx.note("seconds", preds.iter().map(|p| p.seconds).sum::<f64>());
        let mut tasks: Vec<&str> = items.iter().map(|i| i.task.as_str()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        for t in tasks {
            let secs: f64 = items
                .iter()
                .zip(&preds)
                .filter(|(i, _)| i.task == t)
                .map(|(_, p)| p.seconds)
                .sum();
            ctx.note(&format!("seconds.{t}"), secs);
        }
        let (hits, misses) = ctx.memo_counts();
        ctx.note("memoised", hits);
        ctx.note("asked", misses);
        let mut bytes = serde_json::to_vec_pretty(&m)?;
        bytes.push(b'\n');
        std::fs::write(&ctx.output("metrics")?.path, bytes)?;
        Ok(())
    }
}
