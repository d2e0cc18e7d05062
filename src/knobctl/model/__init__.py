"""The knob-aware model: presets, tokenizer, runtime (knob patching), decoding, timing and the controller's features."""
