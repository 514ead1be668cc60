"""The console's text tables (harvest/tables.py): the one layout ``harvest run``'s summary,
``harvest inspect`` and ``evaluate`` print."""
from harvest.tables import RULE, text_table


def test_columns_pad_to_their_widest_cell_and_rules_span_them():
    got = text_table([("name", "n"), RULE, ["a", 1234], RULE, ["TOTAL", None]])
    assert got.splitlines() == ["name   n   ", "-----  ----", "a      1234", "-----  ----",
                                "TOTAL      "]


def test_right_alignment_and_stripped_lines():
    assert text_table([("name", "n"), ["a", 1234]], right=True) == "name     n\n   a  1234"
    assert text_table([("a", "b"), ["xyz"]], strip=True) == "a    b\nxyz"      # short row padded


def test_cells_beyond_the_header_are_dropped():
    assert text_table([("a",), ["x", "extra"]]) == "a\nx"
