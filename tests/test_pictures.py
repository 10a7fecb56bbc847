"""Pictures that explain themselves: a mask drawn as a mask (outline + translucent fill), the
ignore band in the legend, point prompts in the colour of the class they prompt, a line under the
legend saying what a title's figure means."""

import numpy as np
from PIL import Image

from student.eval.inspect_store import SAM_LEGEND, SAM_NOTE
from student.eval.pictures import IGNORE_COLOR, MASK_COLOR, class_colors, draw_prompt, legend_items, mask_overlay, sheet


def test_a_mask_is_an_outline_and_a_translucent_fill():
    image = Image.new("RGB", (20, 20), (100, 100, 100))
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = np.asarray(mask_overlay(image, mask))
    assert (out[5, 5:15] == MASK_COLOR).all()
    assert (out[5:15, 14] == MASK_COLOR).all()  # the outline, solid
    inside = out[10, 10]
    assert not (inside == MASK_COLOR).all()
    assert not (inside == 100).all()  # the fill: tinted, the photo through it
    assert (out[0, 0] == 100).all()
    assert (out[4, 10] == 100).all()  # outside: untouched


def test_the_legend_names_the_ignore_band_and_points_take_their_class_colour():
    names = ["background", "cat", "dog"]
    assert legend_items(names, [0, 2, 255]) == [
        ("background", (0, 0, 0)),
        ("dog", tuple(int(c) for c in class_colors(3)[2])),
        ("ignore (not scored)", IGNORE_COLOR),
    ]
    assert [n for n, _ in legend_items(names, [1])] == ["cat"]
    tile = Image.new("RGB", (40, 40), (0, 0, 0))
    color = tuple(int(c) for c in class_colors(3)[2])
    draw_prompt(tile, points=np.array([[20.0, 20.0]]), point_color=color)
    assert tuple(np.asarray(tile)[20, 20]) == color


def test_a_note_under_the_legend_says_what_the_titles_figure_means():
    tiles = [(f"{i}: box, pred. IoU -0.04", Image.new("RGB", (300, 256), (255, 255, 255))) for i in range(4)]
    plain = sheet(tiles, SAM_LEGEND)
    noted = np.asarray(sheet(tiles, SAM_LEGEND, note=SAM_NOTE))
    assert noted.shape[0] == plain.height + 18
    note_band = noted[plain.height :]
    assert (note_band < 128).any()  # the note's text
    assert "teacher's own estimate" in SAM_NOTE
