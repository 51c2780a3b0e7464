//! The shape of a tiny Qwen2 for a parameter budget: the candidate (hidden size, layers) on
//! a fixed ladder whose parameter count is nearest the budget (ties: fewer layers).

use expflow_models::TinySpec;

/// Parameters of a Qwen2 with untied embeddings, as `Qwen2Config::expected_tensors` counts.
pub fn qwen2_params(s: &TinySpec) -> usize {
    let hd = s.hidden / s.heads;
    let kv = s.kv_heads * hd;
    let attn = s.hidden * s.hidden + s.hidden + 2 * (kv * s.hidden + kv) + s.hidden * s.hidden;
    let mlp = 3 * s.hidden * s.intermediate;
    2 * s.vocab * s.hidden + s.hidden + s.layers * (attn + mlp + 2 * s.hidden)
}

/// A spec of about `params` parameters for a vocabulary of `vocab` (heads of 16 or 32
/// dimensions, half as many key/value heads, intermediate size 2.75 × hidden rounded to 8).
pub fn spec_for_params(params: usize, vocab: usize, seed: u64) -> TinySpec {
    let mut best: Option<(usize, TinySpec)> = None;
    for hidden in [
        32usize, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024,
    ] {
        for layers in 1..=12 {
            let head_dim = if hidden >= 128 { 32 } else { 16 };
            let heads = hidden / head_dim;
            let kv_heads = (heads / 2).max(1);
            let intermediate = (hidden * 11 / 4).div_ceil(8) * 8;
            let spec = TinySpec {
                vocab,
                hidden,
                layers,
                heads,
                kv_heads,
                intermediate,
                seed,
            };
            let d = qwen2_params(&spec).abs_diff(params);
            if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                best = Some((d, spec));
            }
        }
    }
    best.expect("the ladder is not empty").1
}

#[cfg(test)]
mod tests {
    use expflow_models::Qwen2Config;

    use super::*;

    #[test]
    fn the_count_matches_the_tensor_list_and_the_budget_is_approached() {
        let spec = spec_for_params(2_000_000, 2048, 0);
        let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": spec.vocab, "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
        }))
        .unwrap();
        let counted: usize = cfg
            .expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(qwen2_params(&spec), counted);
        let off = counted.abs_diff(2_000_000) as f64 / 2e6;
        assert!(off < 0.15, "{counted} parameters for a 2M budget");
        assert!(spec_for_params(50_000_000, 2048, 0).hidden > spec.hidden);
    }
}
