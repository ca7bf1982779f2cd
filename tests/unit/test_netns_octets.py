"""Test processes running side by side never share a network's second octet."""

from __future__ import annotations

import os
import random

import pytest

from tests.topology.netns import Network


def test_two_networks_hold_different_octets_until_destroyed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no shuffle: both would take the lowest free octet if the first did not hold it
    monkeypatch.setattr(random, "shuffle", lambda seq: None)
    first, second = Network(), Network()
    try:
        assert first.octet != second.octet
        path = first._octet_lock.name
        assert os.path.exists(path)
    finally:
        first.destroy()
        second.destroy()
    assert not os.path.exists(path)
    third = Network()  # that octet is free again: the lowest one is taken again
    try:
        assert third.octet == first.octet
    finally:
        third.destroy()
