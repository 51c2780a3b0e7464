//! Fine-tuning operators (`train.*`), native on candle through `expflow-train`.
