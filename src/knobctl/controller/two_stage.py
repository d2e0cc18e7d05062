"""The two-stage controller inside the model, one request at a time, with its clock.

For a request (image, question, budget):

1. tokenize the question; Stage 1 picks the tier from the question's token embeddings
   (:func:`knobctl.model.features.language_feature_one`, no transformer block); with a fit mask,
   only among tiers where some configuration fits at this question's length;
2. the vision tower encodes the image at that tier only;
3. the prompt's prefill runs the decision block alone (model top-k, its own KV cache), and
   Stage 2 picks (top_k, num_blocks) from that block's output
   (:func:`knobctl.model.features.vision_feature_one`);
4. the prefill goes on from the decision block's output through the chosen blocks at the
   chosen top-k, into a second cache, and greedy decoding continues from both caches joined.

Step 3 and 4 together compute exactly the prefill that :meth:`Runtime.answer` runs with the
chosen knobs (the decision block always runs at the model's top-k), split at the decision
block; nothing runs twice. The controller's overhead is the two features and the two
small networks' decisions, which run in numpy (:class:`knobctl.controller.numpy_policy.NumpyPolicy`). Where the fit
mask leaves one configuration (where nothing fits the budget, the fastest), the request runs it without computing
either feature or decision: there is nothing to decide, and the time would only add to a request already late.

Timing starts from the decoded image (a ``[1, H, W, 3]`` uint8 tensor) and the question
string, the same starting point as the latency profile the estimator is fitted on, and ends
with the last token, with a device sync at both ends. ``controller_ms`` is the part spent in
the controller: both features and both decisions (tokenizing is not counted: every request
tokenizes, and the prefill uses these tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from knobctl.controller.numpy_policy import NumpyPolicy
from knobctl.controller.policy import Controller
from knobctl.knobs import KnobConfig
from knobctl.model.decoding import continue_greedy, new_cache, next_token, prefill
from knobctl.model.families import DECISION_BLOCK
from knobctl.model.features import language_feature_one, vision_feature_one
from knobctl.model.images import ImageLike, Images
from knobctl.model.runtime import Runtime
from knobctl.model.timing import Stopwatch


@dataclass(frozen=True)
class Controlled:
    """One request answered under the controller."""

    answer: str
    knobs: KnobConfig
    latency_ms: float  # the whole request, controller included
    controller_ms: float  # features and decisions of both stages
    text_tokens: int  # the question's length in tokens


@torch.inference_mode()
def answer_controlled(rt: Runtime, ctrl: Controller | NumpyPolicy, image: ImageLike | Images, question: str,
                      budget_ms: float, max_new_tokens: int | None = None) -> Controlled:
    """Answer one request with the knobs the controller picks inside the model (module docstring).

    ``image`` is one image in any form :meth:`Runtime.answer` takes (a PIL image, an array, encoded
    bytes, a path) or a batch of one, such as a decoded ``[1, H, W, 3]`` uint8 tensor: the request's
    clock starts from it as given, so decode it first to time what the profile times. Callers that answer many requests pass
    ``NumpyPolicy.from_controller(ctrl)`` once instead of the controller."""
    policy = ctrl if isinstance(ctrl, NumpyPolicy) else NumpyPolicy.from_controller(ctrl)
    watch = Stopwatch.for_device(rt.device)
    budget = float(budget_ms)
    start = watch.mark()
    q_ids = rt.tokenizer([question], add_special_tokens=False)["input_ids"]
    t1 = watch.mark()  # tokenizing is every request's work, and the prefill reuses it: not the controller's
    ok = policy.feasible(len(q_ids[0]), budget)  # [T, P] what fits this question's length, or None
    # One configuration allowed (with the fit mask: the fastest, where nothing fits): no decision to pay for.
    forced = None if ok is None or ok.sum() != 1 else divmod(int(ok.argmax()), ok.shape[1])
    if forced is None:
        language = language_feature_one(rt, q_ids[0])  # [2H]
        tier_index = policy.choose_tier(language, budget, None if ok is None else ok.any(-1))
    else:
        tier_index = forced[0]
    tier = policy.config.tiers[tier_index]
    spent = watch.mark() - t1
    visual = rt.encode_images(image, tier)  # [1, T, H]
    inputs = rt.embed(visual, rt.prompt_from_ids(q_ids, visual.num_tokens))
    mask, pos = inputs["attention_mask"], inputs["position_ids"]
    first = new_cache(rt)
    with rt.blocks_run([DECISION_BLOCK]), rt.block_outputs(keep_sequence=[DECISION_BLOCK]) as outs:
        prefill(rt, inputs, first)
    states = outs.sequence[DECISION_BLOCK]  # [1, L, H], before any norm
    t2 = watch.mark()
    if forced is None:
        vision = vision_feature_one(rt, states, inputs["input_ids"])  # [2H]
        pair_index = policy.choose_pair(vision, tier_index, language, budget, None if ok is None else ok[tier_index])
    else:
        pair_index = forced[1]
    knobs = KnobConfig(tier, *policy.config.pairs[pair_index])
    spent += watch.mark() - t2
    blocks = rt.spec.blocks_for(knobs.num_blocks, rt.num_layers)
    if blocks[0] != DECISION_BLOCK:
        raise ValueError(f"block order {blocks} does not start with the decision block {DECISION_BLOCK}")
    with rt.knobs_applied(knobs):
        # A second cache for the later blocks: the model derives the causal mask from the
        # cache's length, which must be 0 for this continuation of the same prompt.
        rest = new_cache(rt)
        with rt.blocks_run(blocks[1:]):
            hidden = prefill(rt, inputs, rest, embeds=states, after=DECISION_BLOCK)  # [1, L, H]
        rest.layers[DECISION_BLOCK] = first.layers[DECISION_BLOCK]
        token = next_token(rt, rt.model.lm_head(hidden[:, -1]), ban_eos=False)  # [1]
        tokens = continue_greedy(rt, token, rest, mask, pos, max_new_tokens or rt.spec.max_new_tokens)
    answer = rt.decode(tokens)[0]
    end = watch.mark()
    return Controlled(answer, knobs, (end - start) * 1e3, spent * 1e3, len(q_ids[0]))
