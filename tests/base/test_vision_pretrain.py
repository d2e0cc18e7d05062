"""Vision warm-start: labels mined per image, and the heads learn a separable property."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from knobctl.base.vision_pretrain import ImageLabels, mine_image_labels, pretrain_vision
from tests.conftest import make_runtime


def test_mine_labels_keeps_images_whose_answers_agree():
    df = pd.DataFrame({
        "question_type": ["color", "color", "shape", "color", "shape", "shape", "yes/no"],
        "answers": [["red"], ["red"], ["circle"], ["blue"], ["triangle"], ["circle"], ["yes"]],
    })
    image_index = np.array([0, 0, 0, 1, 1, 1, 2])
    labels = mine_image_labels(df, image_index, num_images=3, types=("color", "shape", "number"))
    # Image 1 has two shape answers that disagree: no shape label for it, and "triangle"
    # (seen only there) is not a class; "number" has no questions at all.
    assert labels.names == {"color": ["blue", "red"], "shape": ["circle"]}
    assert labels.labels["color"].tolist() == [1, 0, -1]
    assert labels.labels["shape"].tolist() == [0, -1, -1]


def test_warm_start_learns_a_colour_split():
    rt = make_runtime()
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(64, 64, 64, 3, dtype=torch.uint8)
    images[:32, :, :, 0] = 255  # red images
    images[32:, :, :, 2] = 255  # blue images
    labels = ImageLabels(names={"color": ["red", "blue"]}, labels={"color": np.array([0] * 32 + [1] * 32)})
    acc = pretrain_vision(rt, images, labels, steps=120, batch_size=32, lr=3e-3, gen=g)
    assert acc["color"] >= 0.98  # mean over the last 50 steps; chance is 0.5
    assert pretrain_vision(rt, images, labels, steps=0, batch_size=8, lr=1e-3, gen=g) == {}
