"""knobctl: a latency-budget controller for Mixture-of-Experts vision-language models."""

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.runtime import Runtime, load_runtime
from knobctl.vqa_metric import normalize_answer, vqa_score

__all__ = ["KnobConfig", "KnobGrid", "Runtime", "load_runtime", "normalize_answer", "vqa_score"]
__version__ = "0.1.0"
