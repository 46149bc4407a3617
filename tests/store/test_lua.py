"""The header every Lua script starts with, run on the real Redis: names come from Python."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys, lua
from shared.model import batch_script
from shared.schemas import BATCH_STATUSES, FINAL_BATCH_STATUSES


async def test_status_names_come_from_the_python_side(redis: Redis) -> None:
    script = lua.header() + "\nreturn {STATUS.queued, STATUS.in_progress, STATUS.cancelled}"
    assert await redis.eval(script, 0) == [b"queued", b"in_progress", b"cancelled"]  # type: ignore[misc]


async def test_final_statuses_are_the_python_ones(redis: Redis) -> None:
    each = "local f = {}\nfor _, s in ipairs(ARGV) do f[#f + 1] = FINAL[s] and 1 or 0 end"
    script = f"{lua.header()}\n{each}\nreturn f"
    found = await redis.eval(script, 0, *BATCH_STATUSES)  # type: ignore[misc]
    assert [s for s, final in zip(BATCH_STATUSES, found, strict=True) if final] == [
        s for s in BATCH_STATUSES if s in FINAL_BATCH_STATUSES
    ]


async def test_a_misspelt_status_is_an_error_not_nil(redis: Redis) -> None:
    with pytest.raises(ResponseError, match="unknown name: in_progres"):
        await redis.eval(lua.header() + "\nreturn STATUS.in_progres", 0)  # type: ignore[misc]


def test_every_batch_script_names_its_keys_by_the_generated_line() -> None:
    names_keys = lua.header(keys=keys.BATCH_SCRIPT_KEYS).splitlines()[-1]
    assert names_keys.startswith("local meta, inputs,")
    for name in ("record", "start", "fail", "cancel", "attempt"):
        assert names_keys in batch_script(name).splitlines()


async def test_batch_scripts_name_their_keys_in_the_order_the_store_passes_them(
    redis: Redis,
) -> None:
    names = ", ".join(keys.BATCH_SCRIPT_KEYS)
    script = lua.header(keys=keys.BATCH_SCRIPT_KEYS)
    found = await redis.eval(  # type: ignore[misc]
        script + f"\nreturn {{{names}}}", len(keys.BATCH_SCRIPT_KEYS), *keys.batch_script_keys("b")
    )
    assert [k.decode() for k in found] == keys.batch_script_keys("b")
