//! Getting tables in and out: `load` and `export`.

mod csv;
pub mod export;
mod json;
pub mod load;

pub use export::Export;
pub use load::Load;
