"""Panels a vision engineer reads without the source: no outline wrapped around the picture's edge,
labelled columns, the heatmap's colour scale, scores as the terminal prints them, no red on a good part."""

from __future__ import annotations

import numpy as np
import pytest

from fre_edge.visualize import LABEL_H, TITLE_H, outline_of, panel, picture_title


def test_a_region_touching_an_edge_draws_nothing_on_the_opposite_edge():
    region = np.zeros((40, 30), bool)
    region[30:, 10:20] = True  # touches the bottom edge
    region[:, 29] = True  # the right column, top to bottom
    edge = outline_of(region)
    assert not edge[0, :29].any() and not edge[:, 0].any()  # no wrap onto the top row or left column
    assert edge[30, 10:20].all() and not edge[39, 11:19].any()  # its top border drawn, the picture's edge not
    assert np.array_equal(edge, edge & region)


def test_panel_labels_its_columns_and_draws_red_only_on_rejects():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[40:, 20:40] = 10.0  # above the pixel threshold (vmax / 2 = 5), touching the bottom edge
    top = TITLE_H + LABEL_H

    def red(p):
        a = np.asarray(p)[top:top + 64]
        return (a[..., 0] == 255) & (a[..., 1] == 0) & (a[..., 2] == 0)

    rejected = panel(image, amap, 10.0, anomalous=True, title="t")
    good = panel(image, amap, 10.0, anomalous=False, title="t")
    assert red(rejected)[:, 2 * 64:].sum() > 20 and red(good)[:, 2 * 64:].sum() == 0
    assert red(rejected)[0, 2 * 64:].sum() == 0  # nothing on the top row
    labels = np.asarray(rejected)[TITLE_H:top]
    for col in range(3):  # each column has its label
        assert (labels[:, col * 64:(col + 1) * 64] < 128).any()
    scale = np.asarray(rejected)[top + 64:]
    heat = scale[:, 64:2 * 64]
    assert (heat[..., 0] > 200).any() and (heat[..., 2] > 80).any()  # the colour bar, blue to red


@pytest.mark.parametrize("score, text", [(36526.8, "score 36526.8"), (0.000123456, "score 0.000123456")])
def test_titles_carry_the_folder_and_terminal_scores(score, text):
    title = picture_title("data/test/crack/000.png", score, 6038.11, True)
    assert title.startswith("crack/000.png") and text in title and "threshold 6038.11" in title
    assert title.endswith(": anomalous")
