"""The table formatting compare and sweep share (sim.tables)."""

from sim.stats import Estimate
from sim.tables import estimate_text, percent, table_head, table_row


def test_percent_and_estimates_read_the_same_from_an_estimate_and_its_saved_record():
    assert (percent(None), percent(12.345), percent(12.345, "%")) == ("n/a", "12.3", "12.3%")
    estimate = Estimate(mean=2.25, half_width=0.5, n=3)
    record = {"mean": 2.25, "half_width": 0.5, "n": 3}
    assert estimate_text(estimate) == estimate_text(record) == "2.2 ± 0.5"  # 2.25 rounds half to even
    assert estimate_text({"mean": -1.0, "half_width": None}, signed=True, digits=2) == "-1.00"
    assert estimate_text({"mean": 1.0, "half_width": None}, signed=True) == "+1.0"
    assert estimate_text(None) == "n/a"


def test_a_table_head_aligns_the_figures_right():
    assert table_head(["axis a", "axis b", "n", "figure"], text_columns=2) == [
        "| axis a | axis b | n | figure |", "| --- | --- | ---: | ---: |"]
    assert table_row(["x", 1]) == "| x | 1 |"
