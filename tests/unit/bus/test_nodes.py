"""``BrokerNodes``: the order a ``;``-separated broker URL list is tried in."""

from __future__ import annotations

import pytest

from service.bus.amqp import BrokerNodes, broker_host


def test_nodes_are_tried_in_turn_and_a_pause_is_due_after_a_whole_round() -> None:
    nodes = BrokerNodes("amqp://u:p@a:1//; amqp://u:p@b:2// ;amqp://u:p@c:3//")
    assert [broker_host(u) for u in nodes.urls] == ["a:1", "b:2", "c:3"]
    assert broker_host(nodes.current) == "a:1"
    assert nodes.failed() is False and broker_host(nodes.current) == "b:2"
    assert nodes.failed() is False and broker_host(nodes.current) == "c:3"
    assert nodes.failed() is True and broker_host(nodes.current) == "a:1"  # round over
    nodes.new_round()
    assert nodes.failed() is False  # counted afresh


def test_one_url_pauses_after_every_failure() -> None:
    nodes = BrokerNodes("amqp://guest:guest@127.0.0.1:5672//")
    assert nodes.failed() is True
    assert nodes.current == "amqp://guest:guest@127.0.0.1:5672//"


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(ValueError, match="HERALD_BROKER_URL"):
        BrokerNodes(" ; ")


def test_logs_never_show_credentials() -> None:
    assert broker_host("amqp://user:secret@rabbit-0:5672//") == "rabbit-0:5672"
