//! `expflow synth mac`: synthetic MAC-Bench data (generated cover PNGs, stories, MAC's CSV,
//! LLaMA-Factory alpaca JSON, and the task's six train/dev/test files under `datasets/` with
//! the test answers in separate key files), deterministic for a seed. The generator lives in
//! `expflow_operators::mac::synth`, where the operator tests use it too.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

/// Arguments of `expflow synth mac`.
#[derive(clap::Args)]
pub struct MacArgs {
    /// Number of issues (cover–story pairs); each gives one image2text and one text2image item.
    #[arg(long, default_value_t = 16)]
    pub items: usize,
    /// Everything written is a function of the seed and the sizes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Width and height of the generated cover PNGs, in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// The directory to write into.
    pub out: PathBuf,
}

pub fn run(args: MacArgs) -> Result<u8> {
    let summary =
        expflow_operators::mac::synth::write_mac(&args.out, args.items, args.seed, args.size)
            .with_context(|| format!("writing synthetic MAC data to {}", args.out.display()))?;
    println!(
        "wrote {} issues over {} journals ({} image2text and {} text2image items) to {}",
        summary.issues,
        summary.journals,
        summary.issues,
        summary.issues,
        args.out.display()
    );
    println!(
        "the task's layout: {}/datasets/{{image2text,text2image}}_{{train,dev,test}}.json (test answers withheld in <task>_test_key.json), images relative to {}",
        args.out.display(),
        args.out.display()
    );
    Ok(0)
}
