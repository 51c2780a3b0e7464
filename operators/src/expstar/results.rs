//! `expstar.results`: the results CSVs of `score.text` (one per arm) → one table, the way
//! `batch_evaluate.py` appends every evaluated file to `evaluation_results.csv` (DAG node
//! 33): one header, then each input's lines in port-name order. Each arm names itself in the
//! `experiment` column (`score.text`'s `experiment` parameter); the inputs must share the
//! header.

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};

use crate::error::{OperatorError, Result};

pub struct Results;

const KIND: &str = "expstar.results";

/// Stacks CSV texts that share their first line.
pub fn stack(inputs: &[(String, String)]) -> Result<String> {
    let mut header: Option<(&str, &str)> = None;
    let mut out = String::new();
    for (port, text) in inputs {
        let mut lines = text.lines();
        let head = lines.next().unwrap_or_default();
        match header {
            None => {
                header = Some((port, head));
                out.push_str(head);
                out.push('\n');
            }
            Some((first, h)) if h != head => {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "input `{port}` has the header `{head}`, input `{first}` has `{h}`; \
                         connect results CSVs of score.text only"
                    ),
                ));
            }
            Some(_) => {}
        }
        for l in lines.filter(|l| !l.is_empty()) {
            out.push_str(l);
            out.push('\n');
        }
    }
    if header.is_none() {
        return Err(OperatorError::data(
            KIND,
            "no input is connected; connect each arm's score.text `results`",
        ));
    }
    Ok(out)
}

impl Operator for Results {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![Port::new(
                "csv",
                PortType::File,
                "experiment, data_type and the scores of every arm (evaluation_results.csv)",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let mut inputs = Vec::new();
        // `inputs()` is sorted by port name: that is the order of the arms.
        for (port, input) in ctx.inputs() {
            let text = std::fs::read_to_string(&input.path)
                .map_err(|e| OperatorError::io("cannot read", &input.path, e))?;
            inputs.push((port.clone(), text));
        }
        let out = stack(&inputs)?;
        let path = &ctx.output("csv")?.path;
        std::fs::write(path, out).map_err(|e| OperatorError::io("cannot write", path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_under_one_header_and_refuses_a_different_one() {
        let a = (
            "a".to_string(),
            "h1,h2\nbaseline,all\nbaseline,x\n".to_string(),
        );
        let b = ("b".to_string(), "h1,h2\nexpstar,all\n".to_string());
        assert_eq!(
            stack(&[a.clone(), b]).unwrap(),
            "h1,h2\nbaseline,all\nbaseline,x\nexpstar,all\n"
        );
        let c = ("c".to_string(), "other\n1\n".to_string());
        let e = stack(&[a, c]).unwrap_err().to_string();
        assert!(e.contains("input `c` has the header `other`"), "{e}");
        assert!(stack(&[]).is_err());
    }
}
