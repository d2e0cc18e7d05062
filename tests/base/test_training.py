"""Base training: the loss targets only the answer, learning happens, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knobctl.base import training, vision_pretrain
from knobctl.base.training import TrainBaseParams, batch_loss, encode_split, lr_at, sample_rows, train_base, type_pools
from knobctl.knobs import KnobConfig
from knobctl.model.presets import ModelParams
from tests.base.conftest import DIMS, GRID, quick


def test_lr_schedule_warmup_plateau_decay():
    p = TrainBaseParams(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.5, min_lr_ratio=0.1)
    assert lr_at(0, p) == pytest.approx(0.1)
    assert lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(30, p) == 1.0 and lr_at(49, p) == 1.0
    assert lr_at(75, p) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(99, p) == pytest.approx(0.1, abs=0.01)


def test_type_sampling_power_sets_the_shares():
    class Data:
        types = np.array([0] * 64 + [1] * 16 + [2] * 4)

    _, equal = type_pools(Data, 0.0)
    _, natural = type_pools(Data, 1.0)
    pools, sqrt = type_pools(Data, 0.5)
    assert equal.tolist() == pytest.approx([1 / 3] * 3)
    assert natural.tolist() == pytest.approx([64 / 84, 16 / 84, 4 / 84])
    assert sqrt.tolist() == pytest.approx([8 / 14, 4 / 14, 2 / 14])
    rows = sample_rows(pools, sqrt, 14000, torch.Generator().manual_seed(0))
    counts = np.bincount(Data.types[rows], minlength=3) / 14000
    assert counts == pytest.approx([8 / 14, 4 / 14, 2 / 14], abs=0.02)


def test_loss_depends_only_on_answer_targets(train_df):
    rt, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=1, batch_size=4), seed=0)
    data = encode_split(rt, train_df, size=64)
    rows = np.array([0, 1, 2])
    loss = batch_loss(rt, data, rows, KnobConfig("high", 8, 16))
    # Hand computation: the answer word and EOS are the last two tokens of each left-padded row.
    with torch.no_grad(), rt.knobs_applied(KnobConfig("high", 8, 16)):
        visual = rt.encode_images(data.images[data.image_index[rows]], "high")
        seqs = [rt.prompt_from_ids([data.questions[r]], visual.num_tokens)[0] + data.answers[r] + [rt.ids["[EOS]"]]
                for r in rows]
        inputs = rt.embed(visual, seqs)
        h = rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                  position_ids=inputs["position_ids"]).last_hidden_state
        logits = rt.model.lm_head(h[:, -3:-1])
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), inputs["input_ids"][:, -2:].reshape(-1))
    assert all(len(data.answers[r]) == 1 for r in rows)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)



def test_loss_runs_exactly_the_blocks_a_recipe_draws(train_df):
    rt, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=1, batch_size=4), seed=0)
    data = encode_split(rt, train_df, size=64)
    rows = np.array([0, 1, 2])
    with torch.no_grad():
        twelve = batch_loss(rt, data, rows, KnobConfig("high", 8, 12)).item()  # blocks 0..11 ("first")
        same = batch_loss(rt, data, rows, KnobConfig("high", 8, 16), blocks=range(12)).item()
        other = batch_loss(rt, data, rows, KnobConfig("high", 8, 16), blocks=[0, *range(5, 16)]).item()
        full = batch_loss(rt, data, rows, KnobConfig("high", 8, 16)).item()
    assert same == pytest.approx(twelve, rel=1e-6) and other != pytest.approx(twelve, rel=1e-4)
    assert rt.lm.layers is not None and len(rt.lm.layers) == 16  # the blocks come back after the batch
    assert full != pytest.approx(twelve, rel=1e-4)


def test_pretrained_recipe_trains_and_differs_from_uniform(train_df):
    uniform, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=3, batch_size=4, knob_sampling="uniform"),
                            seed=0)
    pre, summary = train_base(train_df, GRID, ModelParams(dims=DIMS),
                              quick(steps=3, batch_size=4, knob_sampling="pretrained", layer_drop=0.5), seed=0)
    a, b = uniform.model.state_dict(), pre.model.state_dict()
    assert summary["final_loss"] > 0 and any(not torch.equal(a[k], b[k]) for k in a)

def test_training_lowers_the_loss(train_df):
    params = quick(steps=40, batch_size=32, lr=3e-3, warmup_steps=5)
    rt, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), params, seed=0)
    data = encode_split(rt, train_df, size=64)
    rows = np.arange(64)
    fresh, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=1, lr=1e-9, vision_warmstart_steps=0), seed=0)
    with torch.no_grad():
        trained = float(batch_loss(rt, data, rows, KnobConfig("high", 8, 16)))
        untrained = float(batch_loss(fresh, data, rows, KnobConfig("high", 8, 16)))
    assert trained < 0.6 * untrained, (trained, untrained)


def test_resume_after_interruption_gives_identical_weights(train_df, tmp_path):
    params = quick(steps=6, batch_size=8, checkpoint_every=3)
    full, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), params, seed=1, checkpoint_dir=tmp_path / "ck")
    # The checkpoint at step 3 is what an interrupted run leaves behind; a rerun resumes from it.
    resumed, summary = train_base(train_df, GRID, ModelParams(dims=DIMS), params, seed=1, checkpoint_dir=tmp_path / "ck")
    assert summary["resumed_from_step"] == 3
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    _, s2 = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=6, batch_size=8, lr=1e-3),
                           seed=1, checkpoint_dir=tmp_path / "ck")
    assert s2["resumed_from_step"] == 0  # different params: the old checkpoint is ignored


class Killed(BaseException):
    """The process dying mid-step: a BaseException, so no ``except Exception`` in the library swallows it."""


class KilledAfter:
    """A progress bar that kills the run (raises Killed) when asked for step ``n`` of this run."""

    def __init__(self, real, n: int, starts: list[int]):
        self.real, self.n, self.starts = real, n, starts

    def __call__(self, iterable=None, **kw):
        self.starts.append(kw.get("initial", 0))
        bar = self.real(iterable, **kw)
        n = self.n

        class Bar:
            def __iter__(self):
                for i, item in enumerate(bar):
                    if i == n:
                        raise Killed
                    yield item

            def __getattr__(self, name):
                return getattr(bar, name)

        return Bar()


def assert_same_weights(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


WARM = quick(steps=4, batch_size=8, checkpoint_every=2, vision_warmstart_steps=7)


@pytest.fixture(scope="module")
def uninterrupted(train_df):
    return train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1)


def test_checkpoints_leave_an_uninterrupted_run_unchanged(train_df, tmp_path, uninterrupted):
    saved = []
    real = training._save_warmstart
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "_save_warmstart", lambda path, rt, st, tag: (saved.append(st.step), real(path, rt, st, tag)))
        with_ck, summary = train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1, checkpoint_dir=tmp_path / "ck")
    assert saved == [2, 4, 6]  # the warm-start was checkpointed (not after its last step: the VLM one follows)
    assert_same_weights(with_ck, uninterrupted[0])
    assert summary["vision_warmstart_accuracy"] == uninterrupted[1]["vision_warmstart_accuracy"]
    assert summary["final_loss"] == uninterrupted[1]["final_loss"]
    assert summary["resumed_from_step"] == 0 and summary["resumed_from_warmstart_step"] == 0


def test_a_run_killed_in_the_warm_start_resumes_there_and_ends_identical(train_df, tmp_path, monkeypatch,
                                                                          uninterrupted):
    starts: list[int] = []
    monkeypatch.setattr(vision_pretrain, "progress_bar", KilledAfter(vision_pretrain.progress_bar, 5, starts))
    with pytest.raises(Killed):  # killed in warm-start step 5, after the checkpoint at step 4
        train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1, checkpoint_dir=tmp_path / "ck")
    monkeypatch.undo()
    starts.clear()
    monkeypatch.setattr(vision_pretrain, "progress_bar", KilledAfter(vision_pretrain.progress_bar, 10**9, starts))
    resumed, summary = train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1, checkpoint_dir=tmp_path / "ck")
    assert starts == [4] and summary["resumed_from_warmstart_step"] == 4 and summary["resumed_from_step"] == 0
    assert_same_weights(resumed, uninterrupted[0])
    assert summary["vision_warmstart_accuracy"] == uninterrupted[1]["vision_warmstart_accuracy"]
    assert summary["final_loss"] == uninterrupted[1]["final_loss"]


def test_a_run_killed_before_its_first_vlm_checkpoint_keeps_the_warm_start(train_df, tmp_path, monkeypatch,
                                                                          uninterrupted):
    starts: list[int] = []
    monkeypatch.setattr(training, "progress_bar", KilledAfter(training.progress_bar, 1, starts))
    with pytest.raises(Killed):  # killed in VLM step 1; the first VLM checkpoint would be at step 2
        train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1, checkpoint_dir=tmp_path / "ck")
    monkeypatch.undo()
    warm_steps: list[int] = []
    monkeypatch.setattr(vision_pretrain, "progress_bar", KilledAfter(vision_pretrain.progress_bar, 10**9, warm_steps))
    resumed, summary = train_base(train_df, GRID, ModelParams(dims=DIMS), WARM, seed=1, checkpoint_dir=tmp_path / "ck")
    assert warm_steps == []  # the warm-start did not run again
    assert summary["resumed_from_warmstart_step"] == 7 and summary["resumed_from_step"] == 0
    assert_same_weights(resumed, uninterrupted[0])
    assert summary["vision_warmstart_accuracy"] == uninterrupted[1]["vision_warmstart_accuracy"]


def test_bad_train_params():
    with pytest.raises(ValueError, match="train_base.lr"):
        TrainBaseParams.from_params({"lr": 0})
    with pytest.raises(ValueError, match="unknown keys"):
        TrainBaseParams.from_params({"epochs": 3})
    with pytest.raises(ValueError, match="map tier names"):
        TrainBaseParams.from_params({"vision_warmstart_tier_weights": {"hgh": 3}})
    with pytest.raises(ValueError, match="not all 0"):
        TrainBaseParams.from_params({"vision_warmstart_tier_weights": {"low": 0, "high": 0}})
    assert TrainBaseParams.from_params({"vision_warmstart_tier_weights": {"low": 1, "high": 3}}).vision_warmstart_tier_weights == {"low": 1, "high": 3}
    with pytest.raises(ValueError, match="type_sampling_power"):
        TrainBaseParams.from_params({"type_sampling_power": 2})
    with pytest.raises(ValueError, match="experts_implementation"):
        ModelParams.from_params({"experts_implementation": "fast"})
