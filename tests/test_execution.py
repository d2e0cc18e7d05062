"""Progress output, threads and deterministic algorithms (knobctl.execution)."""

from __future__ import annotations

import io

import pytest
import torch

from knobctl.execution import LogProgress, deterministic


def test_deterministic_switches_on_for_the_block_and_restores_after_an_error():
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="boom"), deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()


def test_grouped_mm_gradients_are_the_same_bytes_under_deterministic():
    """The MoE experts kernel's CPU backward accumulates across threads; train_base relies on this being stable."""
    from transformers import LlavaForConditionalGeneration

    from knobctl.model.presets import TinyDims, preset_config

    torch.manual_seed(0)
    config, _ = preset_config("tiny", vocab_size=40, dims=TinyDims(hidden_size=64, expert_intermediate=64))
    config.text_config._experts_implementation = "grouped_mm"
    model = LlavaForConditionalGeneration(config).model.language_model
    x = torch.randn(16, 24, 64)
    grads = []
    with deterministic():
        for _ in range(4):
            model.zero_grad()
            model(inputs_embeds=x).last_hidden_state.square().sum().backward()
            grads.append(model.layers[2].mlp.experts.down_proj.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_log_progress_prints_a_summary_line():
    out = io.StringIO()
    assert list(LogProgress(range(3), total=3, desc="work", unit="step", stream=out)) == [0, 1, 2]
    assert "work" in out.getvalue() and "3" in out.getvalue()
