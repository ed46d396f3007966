"""How `fmkit evaluate` and the end of `fmkit train` group metric rows into tables: a metric may
declare ``tables = {title: [names]}`` (a second protocol, shown apart); everything else stays in the
first table, in its order."""

from __future__ import annotations

from fmkit.app.builtin.metrics import W2Metric, metric_tables


class TwoProtocols:
    tables = {"table 2": ["c", "d"], "table 3": ["e"]}


ROWS = [("a", 1), ("c", 3), ("b", 2), ("d", 4), ("nll", 9)]


def test_declared_names_move_to_their_table_in_declared_order():
    assert metric_tables(ROWS, [W2Metric(), TwoProtocols()]) == [
        (None, [("a", 1), ("b", 2), ("nll", 9)]),
        ("table 2", [("c", 3), ("d", 4)]),  # "e" was not reported: no empty "table 3"
    ]


def test_metrics_without_tables_give_one_table_in_row_order():
    assert metric_tables(ROWS, [W2Metric()]) == [(None, ROWS)]
    assert metric_tables([], []) == [(None, [])]


def test_a_first_table_is_left_out_only_when_every_row_has_a_table_of_its_own():
    assert metric_tables([("d", 4), ("c", 3)], [TwoProtocols()]) == [("table 2", [("c", 3), ("d", 4)])]
