"""``Coord`` (coords.py): one type for (layer, row = output channel, col = input channel[, expert])."""
from __future__ import annotations

import pytest

import superweight as sw


def test_coordinate_parsing():
    assert sw.Coord.parse("2:3968:7003") == sw.Coord(2, 3968, 7003)
    assert sw.Coord.parse("1, 5, 7, 3") == sw.Coord(1, 5, 7, 3)
    assert str(sw.Coord(1, 5, 7, 3)) == "1:5:7:3"
    for bad in ("1:2", "a:b:c", "-1:2:3", ""):
        with pytest.raises(sw.UsageError):
            sw.Coord.parse(bad)



def test_coordinates_round_trip_through_text_and_json():
    for c in (sw.Coord(11, 507, 1229), sw.Coord(1, 3, 5, 2)):
        assert sw.Coord.parse(str(c)) == c
        d = c.to_dict()
        assert (d["layer"], d["row"], d["col"]) == (c.layer, c.row, c.col)
        assert d.get("expert") == c.expert
    assert sorted([sw.Coord(2, 0, 0), sw.Coord(1, 9, 9), sw.Coord(1, 2, 3)]) == [
        sw.Coord(1, 2, 3), sw.Coord(1, 9, 9), sw.Coord(2, 0, 0)]


def test_a_bad_coordinate_is_one_line_naming_it():
    with pytest.raises(sw.UsageError) as e:
        sw.Coord.parse("1:2:x")
    assert "1:2:x" in str(e.value) and "\n" not in str(e.value)
