"""service.core.routes: a target's routing key (readable names, hashed past AMQP's 255)."""

from __future__ import annotations

from service.core.envelope import NAME_MAX, Target
from service.core.routes import (
    CONNECTION_SHARDS,
    KEY_MAX_BYTES,
    connection_key,
    group_key,
    route_of,
    user_key,
)


def test_keys_name_their_target() -> None:
    assert route_of(Target.all()) == ""
    assert route_of(Target.group("room", "s")) == group_key("s", "room") == "g.s/room"
    assert route_of(Target.user("alice")) == user_key("alice") == "u.alice"
    shard = connection_key("c1")  # connections are hashed into shards
    assert route_of(Target.connection("c1")) == shard
    assert shard.startswith("c.") and int(shard[2:], 16) < CONNECTION_SHARDS
    # kinds never collide: a user named like a group key is another key
    assert user_key("s/room") != group_key("s", "room")


def test_keys_past_amqp_s_limit_are_hashed_and_stay_distinct() -> None:
    wide = "é" * NAME_MAX  # 256 bytes of UTF-8
    keys = {group_key(wide, wide), group_key(wide, wide[:-1] + "e"), user_key(wide),
            connection_key(wide)}
    assert len(keys) == 4
    assert all(len(k.encode()) <= KEY_MAX_BYTES for k in keys)
    assert group_key(wide, wide).startswith("hg.")
    assert len(user_key("a" * NAME_MAX).encode()) <= KEY_MAX_BYTES  # plain: 130 bytes


def test_names_with_topic_wildcards_are_hashed() -> None:
    # "#" and "*" match other keys in a topic binding: such a name must not widen one
    for name in ("#", "a.*", "x#y"):
        assert user_key(name).startswith("hu.") and "#" not in user_key(name)
        assert "*" not in group_key("s", name) and "#" not in group_key("s", name)
