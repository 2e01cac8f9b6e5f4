"""The uniffi Python binding over the tiny-llama fixture: stream, async + cancellation, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import setblock_ffi as sb

FIXTURE = str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-llama")
PROMPT = "Question: a=2; b=6; for i in range(3): a=a+b; b=b+4\nAnswer:"


def config(**kw) -> sb.GenerateConfig:
    base = {
        "mode": sb.DecodeMode.SBD,
        "block_size": 4,
        "selection": sb.SlotSelection.EB_ENTROPY(gamma=0.0),
        "max_new_tokens": 24,
        "chat_template": False,
    }
    base.update(kw)
    return sb.GenerateConfig(**base)


class Collect(sb.GenerationListener):
    def __init__(self, on_block=None) -> None:
        self.events: list = []
        self.on_block = on_block

    def on_event(self, event) -> None:
        self.events.append(event)
        if isinstance(event, sb.GenerationEvent.BLOCK) and self.on_block:
            self.on_block(self)


@pytest.fixture(scope="module")
def model() -> sb.SbModel:
    return sb.SbModel.load(sb.LoadConfig(model_dir=FIXTURE, threads=1))


def test_stream_matches_the_result(model) -> None:
    s = sb.SbSession(model)
    c = Collect()
    r = s.generate(PROMPT, config(), c)
    assert isinstance(c.events[0], sb.GenerationEvent.PREFILL_DONE)
    assert isinstance(c.events[-1], sb.GenerationEvent.FINISHED)
    text = "".join(e.text for e in c.events if isinstance(e, sb.GenerationEvent.BLOCK))
    assert text == r.text and r.stats.generated_tokens == 24 and r.stats.stop_reason == "max_tokens"
    assert model.info().layers == 2


def test_cancel_from_another_thread_at_the_second_block(model) -> None:
    s = sb.SbSession(model)

    def cancel_now(c: Collect) -> None:
        blocks = sum(isinstance(e, sb.GenerationEvent.BLOCK) for e in c.events)
        if blocks == 2:
            t = threading.Thread(target=s.cancel)
            t.start()
            t.join()

    r = s.generate(PROMPT, config(), Collect(cancel_now))
    assert r.stats.stop_reason == "cancelled" and r.stats.generated_tokens == 8
    s.reset()
    assert s.generate(PROMPT, config(), None).stats.generated_tokens == 24


def test_async_generation_and_task_cancellation(model) -> None:
    async def run() -> None:
        s = sb.SbSession(model)
        r = await s.generate_async(PROMPT, config(), None)
        assert r.stats.generated_tokens == 24
        s.reset()
        started = threading.Event()
        task = asyncio.ensure_future(
            s.generate_async(PROMPT, config(max_new_tokens=80), Collect(lambda c: started.set()))
        )
        for _ in range(2000):
            if started.is_set() or task.done():
                break
            await asyncio.sleep(0.001)
        assert started.is_set() and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # dropping the future cancelled the generation: the session frees up and works again
        for _ in range(200):
            try:
                s.reset()
                break
            except sb.SetblockError.Busy:
                await asyncio.sleep(0.005)
        again = await s.generate_async(PROMPT, config(), None)
        assert again.stats.generated_tokens == 24

    asyncio.run(run())


def test_errors_carry_the_runtime_message(model) -> None:
    with pytest.raises(sb.SetblockError.InvalidModel, match="setblock.json"):
        sb.SbModel.load(sb.LoadConfig(model_dir="/tmp"))
    s = sb.SbSession(model)
    with pytest.raises(sb.SetblockError.InvalidOption, match="block_size"):
        s.generate(PROMPT, config(block_size=99), None)
    with pytest.raises(sb.SetblockError.ContextOverflow, match="max_context"):
        s.generate(PROMPT, config(max_new_tokens=1000), None)
