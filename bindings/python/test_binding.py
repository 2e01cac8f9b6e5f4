"""The uniffi Python binding over the tiny-llama fixture: stream, async + cancellation, errors."""

from __future__ import annotations

import asyncio
import re
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


def test_options_out_of_range_name_the_option() -> None:
    with pytest.raises(sb.SetblockError.InvalidOption, match="threads = 100000"):
        sb.SbModel.load(sb.LoadConfig(model_dir=FIXTURE, threads=100000))


def test_a_string_for_an_enum_names_the_enum(model) -> None:
    s = sb.SbSession(model)
    with pytest.raises(TypeError, match=r"expected a DecodeMode \(DecodeMode.SBD, DecodeMode.NTP"):
        s.generate(PROMPT, config(mode="sbd"), None)
    with pytest.raises(TypeError, match=r"expected a SlotSelection \(SlotSelection.EB_ENTROPY\(...\)"):
        s.generate(PROMPT, config(selection="eb"), None)
    assert s.generate(PROMPT, config(), None).stats.generated_tokens == 24


def test_a_listener_that_raises_cancels_and_its_error_reaches_the_caller(model, capfd) -> None:
    class Raises(sb.GenerationListener):
        def __init__(self) -> None:
            self.blocks = 0

        def on_event(self, event) -> None:
            if isinstance(event, sb.GenerationEvent.BLOCK):
                self.blocks += 1
                if self.blocks == 2:
                    raise ValueError("the app's own failure")

    s = sb.SbSession(model)
    listener = Raises()
    with pytest.raises(sb.SetblockError.Listener, match="the app's own failure"):
        s.generate(PROMPT, config(max_new_tokens=80), listener)
    assert listener.blocks == 2, "no event after the one that raised"
    err = capfd.readouterr().err
    assert "panicked" not in err and "backtrace" not in err, err
    s.reset()
    assert s.generate(PROMPT, config(), None).stats.generated_tokens == 24


EXIT_WHILE_GENERATING = """
import sys, threading, time
import setblock_ffi as sb
model = sb.SbModel.load(sb.LoadConfig(model_dir=sys.argv[1], threads=1))
session = sb.SbSession(model)
started = threading.Event()

class Slow(sb.GenerationListener):
    def on_event(self, event):
        started.set()
        time.sleep(0.02)

cfg = sb.GenerateConfig(mode=sb.DecodeMode.NTP, max_new_tokens=100, chat_template=False)
threading.Thread(target=session.generate, args=("Question: a=1\\nAnswer:", cfg, Slow()), daemon=True).start()
started.wait(10)
print("exiting with a generation running", flush=True)
"""


def test_exit_while_a_daemon_thread_generates_is_clean() -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(sb.__file__).resolve().parents[1]))
    for _ in range(3):
        r = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_GENERATING, FIXTURE],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert "exiting with a generation running" in r.stdout
        assert "FATAL" not in r.stderr, r.stderr


def test_sessions_on_four_threads_equal_one_alone(model) -> None:
    prompts = [PROMPT, "Question: a=1\nAnswer:", "Question: sort 3 1 2\nAnswer:", "x"]
    alone = [sb.SbSession(model).generate(p, config(), None).tokens for p in prompts]
    got: dict[int, list] = {}

    def run(i: int) -> None:
        got[i] = [sb.SbSession(model).generate(prompts[i], config(), None).tokens for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(alone):
        assert got[i] == [want] * 3


def test_one_session_from_two_threads_is_busy_not_undefined(model) -> None:
    s = sb.SbSession(model)
    started = threading.Event()
    release = threading.Event()

    def slow(c: Collect) -> None:
        started.set()
        release.wait(10)

    t = threading.Thread(target=s.generate, args=(PROMPT, config(), Collect(slow)))
    t.start()
    assert started.wait(10)
    with pytest.raises(sb.SetblockError.Busy):
        s.generate(PROMPT, config(), None)
    release.set()
    t.join()
    s.reset()
    assert s.generate(PROMPT, config(), None).stats.generated_tokens == 24


def test_structured_output_holds_and_bad_constraints_are_errors(model) -> None:
    s = sb.SbSession(model)
    for mode in (sb.DecodeMode.NTP, sb.DecodeMode.SBD):
        r = s.generate(
            PROMPT, config(mode=mode, constraint=sb.OutputConstraint.REGEX(pattern="a=[0-9]{1,2}; b=[0-9]")), None
        )
        assert re.fullmatch("a=[0-9]{1,2}; b=[0-9]", r.text), r.text
        assert r.stats.stop_reason == "grammar"
        s.reset()
    with pytest.raises(sb.SetblockError.InvalidOption, match="regex"):
        s.generate(PROMPT, config(constraint=sb.OutputConstraint.REGEX(pattern="(unclosed")), None)


def test_verified_sbd_streams_the_ntp_text(model) -> None:
    s = sb.SbSession(model)
    want = s.generate(PROMPT, config(mode=sb.DecodeMode.NTP), None)
    gammas = (0.0, 1e9)  # one slot a forward, a whole block a forward: the fixture's drafts are cut
    for mode, gamma in [(m, g) for m in (sb.DecodeMode.SBD, sb.DecodeMode.AUTO) for g in gammas]:
        s.reset()
        c = Collect()
        r = s.generate(PROMPT, config(mode=mode, selection=sb.SlotSelection.EB_ENTROPY(gamma=gamma), verify=True), c)
        streamed = "".join(e.text for e in c.events if isinstance(e, sb.GenerationEvent.BLOCK))
        assert (r.text, streamed) == (want.text, want.text), (mode, gamma)
    s.reset()
    rx = sb.OutputConstraint.REGEX(pattern="a=[0-9]{1,2}; b=[0-9]")
    s.reset()
    want = s.generate(PROMPT, config(mode=sb.DecodeMode.NTP, constraint=rx), None).text
    s.reset()
    assert s.generate(PROMPT, config(verify=True, constraint=rx), None).text == want
    # sampled values under the constraint: checked against the masked NTP distribution
    for seed in range(3):
        s.reset()
        text = s.generate(PROMPT, config(verify=True, constraint=rx, temperature=0.5, seed=seed), None).text
        assert re.fullmatch(r"a=[0-9]{1,2}; b=[0-9]", text), text
