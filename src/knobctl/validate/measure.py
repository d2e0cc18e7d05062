"""Validation on the real model with real clocks: the controller against baselines, per budget.

Methods, at every budget, on the same held-out test samples:

* ``controller``: the two-stage flow inside the model (:mod:`knobctl.controller.two_stage`), one
  request per (sample, budget), controller included in the latency;
* ``static``: one configuration per budget for the whole run, chosen on the *val* tables with
  estimated latency (:func:`knobctl.table.measures.best_static`: the most accurate one that
  fits 95% of val samples, at the speed scale of the calibration burst); a budget where none
  fits has no static baseline;
* ``lookup``: the fair non-adaptive baseline. At every request, the best single configuration for
  that budget (the same rule as static, on the val tables) given the live speed tracker and overhead
  the controller is given: it fits ``(budget - overhead_ms) / scale`` in the estimator's milliseconds.
  It follows the budget and the machine, never the request, so the controller's gain over lookup is
  what per-request control buys. Where nothing fits it takes the cheapest configuration;
* ``full`` and ``smallest``: the largest and the cheapest configuration of the grid;
* ``random``: per (sample, budget), a seeded uniform pick among the configurations whose
  estimated latency for that request fits (the cheapest if none does);
* ``probe``: the supervised baseline fitted beside the controller (:mod:`knobctl.controller.probe`,
  ``probe.safetensors`` in the controller's folder): per (sample, budget), the fitting configuration
  it rates most likely right, from the sample's features in the test tables. Only its chosen
  configuration is timed, not the features of every tier it reads (a live request would pay those);
* ``best_measured`` (:func:`knobctl.validate.summary.best_measured_rows`): the best of all the
  sample's measured requests that met the budget on the clock; an upper bound on accuracy within
  budget, not a method. To give it its likeliest candidate, the per-sample ``oracle``'s configuration
  (:mod:`knobctl.table.measures`: the most accurate on the test rollouts whose scaled estimate fits)
  is measured too.

Baselines are fixed configurations, so each distinct (sample, configuration) is measured
once and shared between the methods and budgets that use it; a sample's requests run in a
seeded shuffled order, so a slow spell of the machine hits every method alike.
A request *violates* its budget when its measured latency exceeds it.

Speed correction (``calibrate: true``, the default). The estimator prices requests at the
speed the machine had when it was profiled, and the controller adds its own time, which no
profile contains. On a shared machine the speed also drifts by tens of percent within
minutes. So a :class:`SpeedTracker` starts from a burst of ``calibration_requests``
requests (fixed configurations and the controller) and then follows every measured request:
``scale`` = the machine's speed now (the median measured / estimated latency of the last
``speed_window`` fixed-configuration requests) times the ``speed_quantile`` quantile (default 0.95) of how far
one request strays from the speed of its moment, over the last ``jitter_window`` (default 500) requests;
``overhead_ms`` = the same quantile of the last ``speed_window`` controller times. (``jitter_window: 0``: the
quantile of the last ``speed_window`` ratios, which puts drift and jitter in one short window whose tail is
three requests.) A high quantile plans for a slow request rather than a typical one: the
request-to-request jitter on a shared CPU is large, and planning with the median puts a
configuration chosen at the edge of its budget over it about half the time; with the q quantile a
configuration at the edge runs over about 1 - q of the time, so the goal of at most 5% violations
asks for 0.95. The controller is given
``(budget - overhead_ms) / scale`` as its budget in the estimator's milliseconds; the
static, random and oracle choices of a sample are made with the same current ``scale``
(a configuration fits when ``scale`` x its estimate does).

Default budgets span the measured range at the burst's planning speed: from where only the cheapest
configuration fits a slow request (``scale`` x its estimate) to just above the full one.

Budgets that follow the machine (``budgets_follow_speed: true``, the default). A budget is given in ms at the
speed the machine had in the calibration burst, and each sample's requests must finish within the budget times
``speed``: the tracker's median measured / estimated latency when the sample starts (the sample's own requests
are not in it) over the burst's median (column ``speed`` of the requests, 1 when the machine runs as it did in
the burst). The machine's drift then moves every deadline with it and a budget keeps the share of
configurations that fit, from the first sample to the last; what remains is each request's jitter around the
machine's typical speed of the moment, which the planning quantile is for. Budgets fixed in ms (``false``)
measure the machine's drift as well as the methods: on this VM its median speed moved from 1.73x to 0.87x of
the estimate between one run's burst and its requests. ``calibrate: false`` uses the estimates as they are
(speed 1).

Warm-up requests cycle through the grid in a seeded order (the default: every configuration once), so that
no configuration's first call, slower by up to 1.5x on this CPU, lands in the burst or the measurements.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from knobctl.contracts import VALIDATE_REQUESTS
from knobctl.controller.numpy_policy import NumpyPolicy
from knobctl.controller.policy import Controller
from knobctl.controller.probe import Probe, probe_choices
from knobctl.controller.tables import CacheTables, budgets_between
from knobctl.controller.two_stage import answer_controlled
from knobctl.execution import progress_bar
from knobctl.io import write_json_atomic
from knobctl.model.runtime import Runtime
from knobctl.model.timing import answer_fixed
from knobctl.params import build, require, require_device, require_int
from knobctl.parts import PartStore
from knobctl.table.measures import best_static, config_accuracy, full_index, oracle_choice, smallest_index
from knobctl.validate.summary import BASELINES
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.sources import decode_images

CHUNK = 10  # samples per flushed part of a run


@dataclass(frozen=True)
class ValidateParams:
    """The ``validate`` section of params.yaml."""

    num_samples: int = 500
    budgets: tuple[float, ...] | None = None
    num_budgets: int = 8
    warmup_requests: int = 75
    calibrate: bool = True
    calibration_requests: int = 60
    speed_quantile: float = 0.95
    budgets_follow_speed: bool = True
    speed_window: int = 50
    jitter_window: int = 500
    batch_size: int = 50
    device: str = "auto"
    num_threads: int = 1
    repeats: int = 1
    # A larger image or longer question is that sample's error row (knobctl.model.screen); null: the model's limits.
    max_image_pixels: int | None = None
    max_question_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "num_budgets", "batch_size", "calibration_requests", "speed_window", "repeats"):
            require_int(getattr(self, name), f"validate.{name}")
        for name in ("max_image_pixels", "max_question_tokens"):
            if getattr(self, name) is not None:
                require_int(getattr(self, name), f"validate.{name}")
        require_int(self.warmup_requests, "validate.warmup_requests", 0)
        require_int(self.jitter_window, "validate.jitter_window", 0)
        require_int(self.num_threads, "validate.num_threads", 0)
        require(0 < self.speed_quantile <= 1, "validate.speed_quantile", self.speed_quantile,
                "give a quantile in (0, 1], e.g. 0.9")
        for name in ("calibrate", "budgets_follow_speed"):
            require(isinstance(getattr(self, name), bool), f"validate.{name}", getattr(self, name),
                    "write true or false")
        require(self.budgets is None or (len(self.budgets) > 0 and all(b > 0 for b in self.budgets)),
                "validate.budgets", self.budgets, "give positive numbers in ms, or null for num_budgets budgets "
                "spread over the model's estimated latency range")
        require_device(self.device, "validate.device")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ValidateParams:
        return build(cls, section, "validate")


class SpeedTracker:
    """The machine's speed against the estimator and the controller's own time, tracked live.

    Starts from a calibration burst; every fixed-configuration request then adds its
    measured / estimated ratio and every controller request its controller time. ``typical`` is the median
    ratio of the last ``window`` requests. ``scale`` plans for a slow request: the ``quantile`` of the last
    ``window`` ratios, or, with ``jitter_window``, ``typical`` times the ``quantile`` of the last
    ``jitter_window`` ratios each taken over the median of its moment. The second splits what moves fast (the
    machine's speed, which the short window follows) from what holds still (how far one request strays from
    that speed, whose tail a 95th percentile needs hundreds of requests to see: of 50, it is the third
    slowest, and falls short of the true one about half the time).
    """

    def __init__(self, ratios: Sequence[float] = (1.0,), overheads: Sequence[float] = (0.0,), window: int = 25,
                 quantile: float = 0.5, live: bool = True, jitter_window: int = 0):
        self.ratios, self.overheads = deque(ratios, maxlen=window), deque(overheads, maxlen=window)
        self.quantile, self.live = quantile, live
        self.jitter: deque[float] | None = None
        if jitter_window:
            burst = float(np.median(ratios))
            self.jitter = deque((r / burst for r in ratios), maxlen=jitter_window)

    @property
    def scale(self) -> float:
        if self.jitter is None:
            return float(np.quantile(self.ratios, self.quantile))
        return self.typical * float(np.quantile(self.jitter, self.quantile))

    @property
    def typical(self) -> float:
        """The median measured / estimated latency of the recent requests: the machine's speed now."""
        return float(np.median(self.ratios))

    @property
    def overhead_ms(self) -> float:
        return float(np.quantile(self.overheads, self.quantile))

    def controller_budget(self, budget_ms: float) -> float:
        """The budget to give the controller, in the estimator's milliseconds."""
        return (budget_ms - self.overhead_ms) / self.scale

    def observe(self, measured_ms: float, estimated_ms: float, controller_ms: float | None = None) -> None:
        if not self.live:
            return
        if controller_ms is None:
            ratio = measured_ms / estimated_ms
            if self.jitter is not None:  # against the speed the request was planned at
                self.jitter.append(ratio / self.typical)
            self.ratios.append(ratio)
        else:
            self.overheads.append(controller_ms)


def calibrate(rt: Runtime, ctrl: Controller | NumpyPolicy, samples: pd.DataFrame, images: torch.Tensor,
              test: CacheTables, count: int, max_new_tokens: int | None = None) -> tuple[list[float], list[float]]:
    """(measured / estimated ratios, controller times in ms) of ``count`` fixed-configuration
    requests (cheapest, middle, full in turn) and as many controller requests; nothing else is recorded."""
    column = {k: j for j, k in enumerate(test.configs)}
    order = torch.argsort(test.latency_ms.median(0).values)  # [C] cheapest first
    picks = [test.configs[int(order[i])] for i in (0, len(order) // 2, len(order) - 1)]
    mid = float(test.latency_ms[:, order[len(order) // 2]].median())
    ratios, overheads = [], []
    for n in range(count):
        i = n % len(samples)
        image, question = images[i : i + 1], samples["question"].iloc[i]
        knobs = picks[n % len(picks)]
        _, ms = answer_fixed(rt, image, question, knobs, max_new_tokens)
        ratios.append(ms / float(test.latency_ms[i, column[knobs]]))
        overheads.append(answer_controlled(rt, ctrl, image, question, mid, max_new_tokens).controller_ms)
    return [round(r, 5) for r in ratios], [round(o, 5) for o in overheads]


class Baselines:
    """Each baseline's configuration (grid column) for one test sample at every budget. Static is
    fixed per budget from ``static_scale`` (against the budget as given); the others follow the current speed
    ``scale`` of :meth:`choose`: a configuration fits when ``scale`` x its estimate is within the budget times
    ``speed`` (the deadline's scale; 1 for budgets fixed in ms)."""

    def __init__(self, test: CacheTables, val: CacheTables, budgets: Sequence[float], seed: int,
                 static_scale: float = 1.0, probe: torch.Tensor | None = None):
        """``probe``: the probe's P(right) for every test sample and configuration [S, C] (None: no probe)."""
        self.test, self.budgets, self.seed, self.probe = test, tuple(float(b) for b in budgets), seed, probe
        self.val_latency, self.val_acc = val.latency_ms, config_accuracy(val.scores)  # [S, C], [C]
        self.static = [best_static(self.val_acc, val.latency_ms * static_scale, b) for b in self.budgets]
        self.cheapest, self.full = smallest_index(test.configs), full_index(test.configs)

    def choose(self, row: int, scale: float, overhead_ms: float = 0.0, speed: float = 1.0) -> dict[str, list[int]]:
        """baseline -> one column per budget (-1 where the baseline has none). ``scale`` and ``overhead_ms`` are
        the speed tracker's now: lookup plans with both, as the controller's budget does; ``speed`` scales every
        budget to the sample's deadline."""
        gen = np.random.default_rng([self.seed, row])
        lat = self.test.latency_ms[row] * scale  # [C]
        out: dict[str, list[int]] = {m: [] for m in BASELINES if m != "probe" or self.probe is not None}
        for b, static in zip((b * speed for b in self.budgets), self.static):
            ok = torch.nonzero(lat <= b).flatten()  # [F]
            lookup = best_static(self.val_acc, self.val_latency, (b - overhead_ms) / scale)
            out["lookup"].append(self.cheapest if lookup is None else lookup)
            out["static"].append(-1 if static is None else static)
            out["full"].append(self.full)
            out["smallest"].append(self.cheapest)
            out["random"].append(int(ok[gen.integers(len(ok))]) if len(ok) else self.cheapest)
            oracle = int(oracle_choice(self.test.scores[row : row + 1], lat[None], b)[0])
            out["oracle"].append(oracle if oracle >= 0 else self.cheapest)
            if self.probe is not None:
                out["probe"].append(int(probe_choices(self.probe[row : row + 1], lat[None], b, self.test.complexity)[0]))
        return out


def run_requests(rt: Runtime, ctrl: Controller | NumpyPolicy, samples: pd.DataFrame, images: torch.Tensor,
                 test: CacheTables, baselines: Baselines, tracker: SpeedTracker, seed: int, rows: Sequence[int],
                 max_new_tokens: int | None = None, on_sample: Any = None,
                 repeats: int = 1, drift_from: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every request of the given test rows, shuffled per sample: (one row per request, one row
    per (sample, baseline, budget) naming the configuration that answers it). With ``repeats`` > 1 every
    request runs that many times (column ``repeat``), all of a sample's shuffled together, so that a noisy
    clock averages out per sample; the baselines' choices are made once per sample. ``drift_from``: the burst's
    typical speed; the sample's deadlines are then its budgets times the tracker's typical speed when it starts
    over that (column ``speed``; module docstring). None: the budgets as they are (speed 1).

    ``samples`` (columns sample_id, question, answers, question_type) and ``images``
    ([S, H, W, 3] uint8, decoded before any clock starts) follow the test tables' rows."""
    out: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    column = {k: j for j, k in enumerate(test.configs)}
    for i in rows:
        row = samples.iloc[i]
        image, answers = images[i : i + 1], list(row["answers"])
        speed = tracker.typical / drift_from if drift_from else 1.0
        scale = tracker.scale  # a median and a quantile over the windows: once per sample, not per budget
        choice = baselines.choose(i, scale, tracker.overhead_ms, speed)
        fit = [float((test.latency_ms[i] * scale <= b * speed).float().mean()) for b in baselines.budgets]
        chosen += [{"sample_id": row["sample_id"], "method": m, "budget_ms": b, "config": test.configs[c].label,
                    "fit_share": f} for m, cols in choice.items() for b, c, f in zip(baselines.budgets, cols, fit)
                   if c >= 0]
        needed = sorted({c for cols in choice.values() for c in cols if c >= 0})
        jobs = [(kind, what, r) for r in range(repeats)
                for kind, what in [("controller", b) for b in baselines.budgets] + [("fixed", c) for c in needed]]
        order = np.random.default_rng([seed, int(i)]).permutation(len(jobs))
        for pos in order.tolist():
            kind, what, repeat = jobs[pos]
            if kind == "controller":
                given = tracker.controller_budget(what * speed)
                res = answer_controlled(rt, ctrl, image, row["question"], given, max_new_tokens)
                answer, knobs, ms, ctrl_ms, budget = res.answer, res.knobs, res.latency_ms, res.controller_ms, what
            else:
                knobs, given, ctrl_ms, budget = test.configs[what], float("nan"), 0.0, float("nan")
                answer, ms = answer_fixed(rt, image, row["question"], knobs, max_new_tokens)
            estimated = float(test.latency_ms[i, column[knobs]])
            tracker.observe(ms, estimated, ctrl_ms if kind == "controller" else None)
            out.append({
                "sample_id": row["sample_id"], "question_type": row["question_type"], "kind": kind,
                "budget_ms": budget, "speed": round(speed, 5), "controller_budget_ms": given, "config": knobs.label, "tier": knobs.tier,
                "top_k": knobs.top_k, "num_blocks": knobs.num_blocks, "answer": answer,
                "score": vqa_score(answer, answers), "latency_ms": ms, "controller_ms": ctrl_ms,
                "estimated_ms": estimated, "rollout_score": float(test.scores[i, column[knobs]]), "order": pos,
                "repeat": repeat,
            })
        if on_sample is not None:
            on_sample()
    return pd.DataFrame(out), pd.DataFrame(chosen)


def run_validation(rt: Runtime, ctrl: Controller, samples: pd.DataFrame, test: CacheTables, val: CacheTables,
                   p: ValidateParams, seed: int, store: PartStore, progress: bool = True,
                   probe: Probe | None = None) -> tuple[pd.DataFrame, pd.DataFrame, tuple[float, ...], tuple[float, float, float]]:
    """Warm up, calibrate (or reload a killed run's calibration), then measure the samples the
    store does not hold yet, one flushed part per chunk. Returns (requests, chosen, budgets,
    (starting scale, starting overhead_ms, starting typical speed))."""
    images = torch.from_numpy(decode_images(samples["image"].tolist(), size=rt.image_size))
    policy = NumpyPolicy.from_controller(ctrl)
    n = len(samples)
    warm = np.random.default_rng([seed, n]).permutation(len(test.configs))
    for i in range(p.warmup_requests):  # one-off allocations, per configuration, stay out of the measurements
        answer_fixed(rt, images[i % n : i % n + 1], samples["question"].iloc[i % n], test.configs[warm[i % len(warm)]])
    saved = store.directory / "calibration.json"
    if saved.exists():  # a resumed run keeps its first start's calibration, hence its budgets
        ratios, overheads = json.loads(saved.read_text())
    else:
        ratios, overheads = (calibrate(rt, policy, samples, images, test, p.calibration_requests) if p.calibrate
                             else ([1.0], [0.0]))
        write_json_atomic(saved, [ratios, overheads])
    tracker = SpeedTracker(ratios, overheads, p.speed_window, p.speed_quantile, live=p.calibrate,
                           jitter_window=p.jitter_window)
    budgets = p.budgets or budgets_between(test.latency_ms, p.num_budgets, tracker.scale)
    baselines = Baselines(test, val, budgets, seed, static_scale=tracker.scale,
                          probe=None if probe is None else probe.predict(test.language, test.vision))
    calibration = (round(tracker.scale, 4), round(tracker.overhead_ms, 4), round(tracker.typical, 4))
    drift_from = tracker.typical if p.budgets_follow_speed and p.calibrate else None  # the burst's, fixed for the run
    choices = PartStore(store.directory / "choices", flush_every=10**9)
    resumed = store.read()
    if len(resumed):  # a killed run's parts: checked before a single request is added to them
        VALIDATE_REQUESTS.check(resumed, store.directory)
    done = set(resumed.get("sample_id", []))
    todo = [i for i in range(n) if samples["sample_id"].iloc[i] not in done]
    with progress_bar(total=len(todo), desc="validate", unit="sample", disable=not progress) as bar:
        for c in range(0, len(todo), CHUNK):
            requests, chosen = run_requests(rt, policy, samples, images, test, baselines, tracker, seed,
                                            todo[c : c + CHUNK], on_sample=bar.update, repeats=p.repeats,
                                            drift_from=drift_from)
            for part, frame in ((choices, chosen), (store, requests)):  # a sample is done once its requests are
                for record in frame.to_dict("records"):
                    part.append(record)
                part.flush()
    return store.read(), choices.read(), tuple(budgets), calibration
