//! `train.reference_logprobs` and `train.dpo`.
//!
//! - `train.reference_logprobs`: preference rows (ms-swift `{messages, rejected_response}` or
//!   alpaca `{instruction, input, chosen, rejected}`) and a model → a table of the reference
//!   log-probabilities of both answers (`row`, `chosen_logp`, `chosen_tokens`,
//!   `rejected_logp`, `rejected_tokens`). Computed once and kept, so a change of `beta` or of
//!   the loss re-runs DPO only.
//! - `train.dpo`: LoRA DPO (sigmoid with label smoothing, IPO, hinge) against that table (or
//!   the same computation inside when `reference` is not connected); outputs `model` and
//!   `metrics` with `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
//!   `rewards/margins`, `logps/chosen`, `logps/rejected` per logged step.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_train::dpo::{
    Dpo as DpoObjective, EncodedPair, Loss, RefLogps, encode_pairs, reference_logps,
};
use expflow_train::{Lora, train};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::common::{self, Defaults};
use super::sft::BACKENDS;
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct ReferenceLogprobs;
pub struct Dpo;

const REF: &str = "train.reference_logprobs";
const KIND: &str = "train.dpo";

fn encoded(
    ctx: &Context,
    op: &'static str,
    model: &dyn expflow_models::Trainable,
    max_len: usize,
) -> Result<Vec<EncodedPair>, OpError> {
    let rows = crate::train_io::read_rows(op, &ctx.input("data")?.path)?;
    let pairs = expflow_train::data::pairs(&rows)
        .map_err(|e| OperatorError::data(op, format!("input `data`: {e}")))?;
    Ok(encode_pairs(model, &pairs, max_len)?)
}

fn ref_table(refs: &[RefLogps]) -> Result<DataFrame> {
    DataFrame::new(
        refs.len(),
        vec![
            Column::new("row".into(), (0..refs.len() as i64).collect::<Vec<_>>()),
            Column::new(
                "chosen_logp".into(),
                refs.iter().map(|r| r.chosen).collect::<Vec<_>>(),
            ),
            Column::new(
                "chosen_tokens".into(),
                refs.iter()
                    .map(|r| r.chosen_tokens as i64)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "rejected_logp".into(),
                refs.iter().map(|r| r.rejected).collect::<Vec<_>>(),
            ),
            Column::new(
                "rejected_tokens".into(),
                refs.iter()
                    .map(|r| r.rejected_tokens as i64)
                    .collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(|e| OperatorError::polars(REF, "building the reference table", e))
}

/// Reads a reference table and checks it against the encoded pairs.
fn read_refs(path: &std::path::Path, pairs: &[EncodedPair]) -> Result<Vec<RefLogps>> {
    let df = read_table(path)?;
    let f = |name: &str| -> Result<Vec<f64>> {
        let c = df
            .column(name)
            .and_then(|c| c.cast(&DataType::Float64))
            .map_err(|e| {
                OperatorError::polars(KIND, format!("reading `{name}` of input `reference`"), e)
            })?;
        Ok(c.f64()
            .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}`"), e))?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    let (c, cn, r, rn) = (
        f("chosen_logp")?,
        f("chosen_tokens")?,
        f("rejected_logp")?,
        f("rejected_tokens")?,
    );
    if c.len() != pairs.len() {
        return Err(OperatorError::data(
            KIND,
            format!(
                "input `reference` has {} rows for {} pairs in `data`; compute it with train.reference_logprobs on the same data",
                c.len(),
                pairs.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(c.len());
    for (i, p) in pairs.iter().enumerate() {
        let want = (p.chosen.trained_tokens(), p.rejected.trained_tokens());
        if (cn[i] as usize, rn[i] as usize) != want {
            return Err(OperatorError::data(
                KIND,
                format!(
                    "pair {}: the reference counted {} / {} answer tokens, this model's tokenizer {} / {}; compute the reference with the same model and max_len",
                    i + 1,
                    cn[i],
                    rn[i],
                    want.0,
                    want.1
                ),
            ));
        }
        out.push(RefLogps {
            chosen: c[i],
            chosen_tokens: want.0,
            rejected: r[i],
            rejected_tokens: want.1,
        });
    }
    Ok(out)
}

fn data_port() -> Port {
    Port::new(
        "data",
        PortType::File,
        "preference rows: ms-swift {messages, rejected_response} or alpaca {instruction, input, chosen, rejected}",
    )
}

impl Operator for ReferenceLogprobs {
    fn kind(&self) -> &'static str {
        REF
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                data_port(),
                Port::new("model", PortType::Model, "the reference model"),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "row, chosen_logp, chosen_tokens, rejected_logp, rejected_tokens",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "max_len",
                    ParamKind::Int,
                    json!(4096),
                    "tokens per sequence (as in train.dpo)",
                ),
                ParamSpec::with_default(
                    "batch_size",
                    ParamKind::Int,
                    json!(4),
                    "pairs per forward pass",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(REF, ctx.params());
        let model = common::load_model(ctx, REF)?.model;
        let pairs = encoded(ctx, REF, model.as_ref(), p.u64("max_len")? as usize)?;
        let refs = reference_logps(model.as_ref(), &pairs, p.u64("batch_size")? as usize)?;
        ctx.log(&format!(
            "reference log-probabilities of {} pairs",
            refs.len()
        ));
        write_table(&mut ref_table(&refs)?, &ctx.output("table")?.path)?;
        Ok(())
    }
}

fn check_all(map: &Map<String, Value>) -> Result<()> {
    let p = Params::new(KIND, map);
    p.choice("backend", &BACKENDS)?;
    Loss::parse(p.str("loss")?).map_err(|e| OperatorError::param(KIND, "loss", e.to_string()))?;
    let beta = p.f64("beta")?;
    if beta.is_nan() || beta <= 0.0 {
        return Err(OperatorError::param(
            KIND,
            "beta",
            format!("is {beta}; it must be positive"),
        ));
    }
    let eps = p.f64("label_smoothing")?;
    if !(0.0..0.5).contains(&eps) {
        return Err(OperatorError::param(
            KIND,
            "label_smoothing",
            format!("is {eps}; use a value in [0, 0.5)"),
        ));
    }
    common::parse(KIND, map)?;
    Ok(())
}

impl Operator for Dpo {
    fn read_series(
        &self,
        path: &std::path::Path,
    ) -> Option<Result<expflow_engine::Series, OpError>> {
        Some(crate::table_io::numeric_columns(path).map_err(OpError::from))
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let mut params = common::loop_params(&Defaults {
            rank: 4,
            alpha: 16.0,
            lr: 1e-6,
            epochs: 1,
        });
        params.extend([
            ParamSpec::with_default("beta", ParamKind::Float, json!(0.1), "DPO beta (IPO: tau)"),
            ParamSpec::with_default(
                "loss",
                ParamKind::String,
                json!("sigmoid"),
                "sigmoid (DPO; with label_smoothing: cDPO), ipo or hinge",
            ),
            ParamSpec::with_default(
                "label_smoothing",
                ParamKind::Float,
                json!(0.0),
                "cDPO's epsilon, in [0, 0.5)",
            ),
        ]);
        params.extend(crate::tools::backend_params());
        Signature {
            inputs: Ports::Fixed(vec![
                data_port(),
                Port::new(
                    "model",
                    PortType::Model,
                    "the model to improve (the SFT result); also the reference when `reference` is absent",
                )
                .optional(),
                Port::new(
                    "reference",
                    PortType::Table,
                    "train.reference_logprobs of `data` under the reference model",
                )
                .optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "swift and llamafactory: the directory relative image/video paths of `data` are in (an export's `media`)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "model",
                    PortType::Model,
                    "the model after DPO (merged, with the adapter in adapter/), or the adapter alone",
                ),
                Port::new(
                    "metrics",
                    PortType::Table,
                    "step, epoch, lr, loss, grad_norm, rewards/*, logps/*",
                )
                .metrics(),
            ]),
            params,
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        common::determinism(params)
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(check_all(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        if let Some(done) = common::run_external(ctx, KIND, crate::tools::Stage::Dpo) {
            return done;
        }
        let p = Params::new(KIND, ctx.params());
        let (cfg, lora_cfg) = common::parse(KIND, ctx.params())?;
        let common::Loaded {
            mut model, base, ..
        } = common::load_model(ctx, KIND)?;
        let pairs = encoded(ctx, KIND, model.as_ref(), p.u64("max_len")? as usize)?;
        let reference = match ctx.inputs().get("reference") {
            Some(r) => read_refs(&r.path, &pairs)?,
            None => {
                ctx.log("no `reference` input: computing reference log-probabilities with the input model");
                reference_logps(model.as_ref(), &pairs, cfg.batch_size.max(4))?
            }
        };
        let lora = Lora::attach(model.as_mut(), &lora_cfg)?;
        let loss = Loss::parse(p.str("loss")?)?;
        ctx.log(&format!(
            "DPO ({loss:?}, beta {}): {} pairs; LoRA r {} alpha {} ({} trainable parameters)",
            p.f64("beta")?,
            pairs.len(),
            lora_cfg.rank,
            lora_cfg.alpha,
            lora.parameters()
        ));
        let mut obj = DpoObjective {
            pairs,
            reference,
            loss,
            beta: p.f64("beta")?,
            label_smoothing: p.f64("label_smoothing")?,
        };
        let ckpt = common::checkpoints(ctx)?;
        let out = common::with_hooks(ctx, |hooks| {
            train(model.as_mut(), &lora, &mut obj, &cfg, Some(&ckpt), hooks)
        })?;
        crate::train_io::write_metrics(ctx, KIND, &out.rows)?;
        common::write_model(ctx, &base, &lora, p.bool("merge")?)?;
        Ok(())
    }
}
