"""The knob-aware model: the runtime (knob patching) over one layout per model format (knobctl's own, HF families),
presets, tokenizer, decoding, timing and the controller's features. docs/adding-a-family.md adds a family."""
