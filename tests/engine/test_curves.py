"""fmkit.engine.curves: the smoothing against hand-computed values, and a picture from a hand-written log."""

from __future__ import annotations

import csv

import pytest
from fmkit.engine.curves import plot_curves, smooth
from fmkit.errors import FmkitError


def test_debiased_ema_matches_hand_computed_values():
    # w = 0.5: EMA_1 = 0.5*2 = 1 -> /0.5 = 2; EMA_2 = 0.5*1 + 0.5*4 = 2.5 -> /0.75 = 10/3
    assert smooth([2.0, 4.0], 0.5) == pytest.approx([2.0, 10.0 / 3.0])
    assert smooth([3.0] * 50, 0.9) == pytest.approx([3.0] * 50)  # a constant stays constant from the start
    assert smooth([1.0, 5.0, 2.0], 0.0) == [1.0, 5.0, 2.0]  # weight 0: the raw values


def test_plot_writes_one_png_and_refuses_an_empty_log(tmp_path):
    from PIL import Image

    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "name", "value"])
        for s in range(10, 510, 10):
            w.writerows([[s, "loss", 1.0 / s], [s, "lr", 1e-3], [s, "my_callback_value", s]])
        w.writerows([[250, "eval/w2", 0.5], [500, "eval/w2", 0.3]])
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 500  # 4 panels: two rows of three
    assert not list(tmp_path.glob(".*tmp*"))  # written beside and renamed
    (tmp_path / "metrics.csv").write_text("step,name,value\n")
    with pytest.raises(FmkitError, match="no metrics to plot"):
        plot_curves(tmp_path)


def test_an_unwritable_out_is_an_output_error_naming_it(tmp_path):
    """A curves file that cannot be written is an OutputError naming it, not an internal error. (The
    folder is a file here: a permission test would pass as root.)"""
    from fmkit.errors import OutputError

    (tmp_path / "metrics.csv").write_text("step,name,value\n10,loss,1.0\n20,loss,0.5\n")
    (tmp_path / "not_a_folder").write_text("")
    bad = tmp_path / "not_a_folder" / "curves.png"
    with pytest.raises(OutputError, match="cannot write the curves to") as ei:
        plot_curves(tmp_path, bad)
    assert ei.value.where == str(bad) and "--out" in ei.value.fix
