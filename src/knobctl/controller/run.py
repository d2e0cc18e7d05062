"""The train_controller stage as two calls: :func:`train_from_cache` loads the cache (accuracy table, latency
estimator, profiled spread), trains the controller and evaluates it on held-out samples; :func:`write_training`
writes the controller folder, its metrics and its plots as one set.

A cell the accuracy table lacks is answered by the real model (:class:`knobctl.table.online.OnlineCells`),
loaded only if training samples such a cell, with the table's own block order and tiers: a path in params may
point elsewhere since the table was built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knobctl.contracts import PROFILE_SUMMARY, VQA_SPLIT, read_table, table_provenance
from knobctl.controller.evaluation import evaluation_frame, training_detail, training_headline, training_metrics
from knobctl.controller.policy import TRAINED_WITH
from knobctl.controller.reward import RewardWeights
from knobctl.controller.spread import latency_spread
from knobctl.controller.tables import CacheTables, build_tables
from knobctl.controller.training import TrainParams, TrainResult, train_controller
from knobctl.execution import use_threads
from knobctl.io import output_set, write_csv, write_json, write_parquet
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.measures import signed
from knobctl.weights import write_manifest


@dataclass(frozen=True)
class TrainInputs:
    """Where training reads from: the accuracy table, the latency estimator, the latency profile (each
    configuration's spread) and the VQA splits (for cells answered online)."""

    rollouts: str = "data/rollouts"
    estimator: str = "models/latency_estimator"
    profile: str = "data/profile"
    data: str = "data/vqa"


@dataclass(frozen=True)
class Training:
    """A trained controller with everything written beside it."""

    result: TrainResult
    params: TrainParams
    weights: RewardWeights
    seed: int
    headline: Mapping[str, Any]  # :func:`knobctl.controller.evaluation.training_headline`

    def line(self) -> str:
        """The stage's last line: speed, the last training point, and the held-out headline."""
        s, h = self.result.summary, self.headline
        return (f"train_controller: {self.params.steps} steps in {s['train_seconds']:.0f} s ({s['rollouts_per_s']:,} "
                f"cached rollouts/s); final reward {s['final']['reward']:.3f}, accuracy {s['final']['accuracy']:.3f}, "
                f"violations {s['final']['violation_rate']:.1%}; >= best static at {h['budgets_at_least_static']} of "
                f"{h['budgets_with_static']} budgets (> at {h['budgets_above_static']}), mean gain "
                f"{h['mean_gain_over_static']:+.4f}; where a choice exists: gain {signed(h['mean_gain_where_choice'])}, "
                f"probe - controller {signed(h['probe_minus_controller_where_choice'])}; slow-request rate "
                f"{h['mean_slow_rate']:.1%}; goals met {h['goals_met']} of {h['goals_measured']}")


def load_tables(inputs: TrainInputs, grid: KnobGrid) -> CacheTables:
    """The cache as lookup tensors over the knobs grid, with each configuration's profiled spread. A table of some
    of the grid's configurations is allowed; the rest is named on stderr, since it is answered online (slowly)."""
    table = AccuracyTable.load(inputs.rollouts)
    table.check_grid(grid, inputs.rollouts, "train_controller", "the cells the policy samples there are answered "
                     "online by the real model")
    spread = latency_spread(read_table(Path(inputs.profile) / "summary.parquet", PROFILE_SUMMARY), grid.configs())
    return build_tables(table, LatencyEstimator.load(inputs.estimator), grid.configs(), spread)


def online_cells(inputs: TrainInputs, tables: CacheTables) -> Callable[[], Any]:
    """A factory of the real model's answers for cells the table lacks, as the table's own model made them."""
    meta = table_provenance(Path(inputs.rollouts) / "rollouts.parquet")

    def load() -> Any:
        from knobctl.model.runtime import load_runtime
        from knobctl.table.online import OnlineCells

        split = read_table(Path(inputs.data) / f"{meta['split']}.parquet", VQA_SPLIT).set_index("sample_id")
        rt = load_runtime(meta["model"], block_order=meta.get("block_order"), tier_tokens=meta.get("tier_tokens"))
        return OnlineCells(rt, split.loc[tables.sample_ids].reset_index(), tables.configs)

    return load


def train_from_cache(own: Mapping[str, Any], grid: KnobGrid, reward: Mapping[str, Any], seed: int,
                     inputs: TrainInputs = TrainInputs()) -> Training:
    """Train and evaluate the controller (:func:`knobctl.controller.training.train_controller`) from the
    ``train_controller`` section ``own`` (overrides applied) and the ``reward`` section's weights."""
    weights = RewardWeights.from_params(reward)
    p = TrainParams.from_params(own)
    use_threads(p.num_threads)
    tables = load_tables(inputs, grid)
    result = train_controller(tables, p, weights, seed, fetch_factory=online_cells(inputs, tables))
    return Training(result, p, weights, seed, training_headline(result.summary, result.evaluation))


def write_training(t: Training, out: str | Path, metrics: str | Path, plots: str | Path) -> None:
    """The controller folder (weights, probe, what trained it, the online refresh log), metrics/train.json and
    plots/train (training.json: every figure and goal; curves.csv; budgets.csv): all of them or none."""
    r, h = t.result, dict(t.headline)
    with output_set() as outs:
        folder = outs.dir(out)
        r.controller.save(folder)
        r.probe.save(folder)
        # What trained it, beside the weights: validate names these in its provenance.
        write_json(folder / TRAINED_WITH, {"reward": t.weights.as_params(), "seed": t.seed,
                                          "train_controller": asdict(t.params)})
        write_parquet(folder / "refresh_log.parquet", r.refresh_log)
        write_manifest(folder, r.controller.manifest_facts())  # last: it hashes every file above
        write_json(outs.file(metrics), training_metrics(r.summary, r.evaluation, h))
        write_json(outs.file(Path(plots) / "training.json"),
                   training_detail(r.summary, r.evaluation, t.weights.as_params(), h))
        write_csv(outs.file(Path(plots) / "curves.csv"), r.curves)
        write_csv(outs.file(Path(plots) / "budgets.csv"), evaluation_frame(r.evaluation))
