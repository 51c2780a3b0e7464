//! Adapters for the external tools researchers run today: LLaMA-Factory, ms-swift, vllm_infer.
