//! expflow's native fine-tuning on candle.
