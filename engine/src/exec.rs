//! Executing one node: materialising inputs, running the operator, storing outputs.

use crate::operator::PortType;

/// The file name an output is written under in the node's output directory. Tables get
/// `.parquet` and metrics `.json`, so tools that look at extensions behave.
pub fn output_file_name(port: &str, ty: PortType) -> String {
    match ty {
        PortType::Table => format!("{port}.parquet"),
        PortType::Metrics => format!("{port}.json"),
        _ => port.to_string(),
    }
}
