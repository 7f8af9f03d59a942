"""Cancellation, the GIL, and one model serving several threads."""

import _thread
import sys
import threading
import time

import numpy as np
import pytest

import janus_rs

PROMPT = "A close-up photo of a red apple on a wooden table."


def cancel_at(at_step, do_cancel):
    """A progress callback that, when step `at_step` is reported, has another
    thread call do_cancel() and waits until it has: the cancel is in before
    the next step starts, whatever the machine's speed. Returns (progress,
    seen steps, the thread, its state)."""
    seen, state = [], {}
    reached, done = threading.Event(), threading.Event()

    def progress(step, total):
        seen.append(step)
        if len(seen) == at_step:
            reached.set()
            assert done.wait(30), "the cancelling thread did not run"

    def run():
        assert reached.wait(30), "the call never reached the step"
        state["result"] = do_cancel()
        done.set()

    t = threading.Thread(target=run)
    t.start()
    return progress, seen, t, state


def test_cancel_from_another_thread_stops_within_one_step(model):
    progress, seen, t, state = cancel_at(3, model.cancel)
    with pytest.raises(janus_rs.Cancelled):
        model.generate_array(PROMPT, temperature=0, progress=progress)
    t.join()
    assert state["result"] == 1  # one call was running
    assert len(seen) == 3 < model.image_token_count  # no step after the cancel
    # cancel() only stops calls running at the time.
    assert model.cancel() == 0
    assert model.generate_tokens(PROMPT, temperature=0).shape == (1, model.image_token_count)


def test_cancel_event_stops_within_one_step(model):
    event = threading.Event()
    progress, seen, t, _ = cancel_at(4, event.set)
    with pytest.raises(janus_rs.Cancelled):
        model.generate(PROMPT, temperature=0, progress=progress, cancel_event=event)
    t.join()
    assert len(seen) == 4 < model.image_token_count


def test_cancel_event_without_progress(model):
    event = threading.Event()
    event.set()
    with pytest.raises(janus_rs.Cancelled):
        model.generate_tokens(PROMPT, cancel_event=event)
    with pytest.raises(janus_rs.Cancelled):
        model.understand(None, "What is a cat?", cancel_event=event)
    with pytest.raises(janus_rs.Cancelled):
        list(model.stream_understand(None, "What is a cat?", cancel_event=event))

    # Anything with is_set() will do.
    class Flag:
        def is_set(self):
            return False

    answer = model.understand(None, "What is a cat?", max_new_tokens=2, cancel_event=Flag())
    assert answer == model.understand(None, "What is a cat?", max_new_tokens=2)


def test_cancel_understanding(model):
    event = threading.Event()
    progress, seen, t, _ = cancel_at(5, event.set)
    with pytest.raises(janus_rs.Cancelled):
        model.understand(None, "What is a cat?", max_new_tokens=200, progress=progress, cancel_event=event)
    t.join()
    assert len(seen) == 5


def test_cancel_a_stream(model):
    event = threading.Event()
    stream = model.stream_understand(None, "What is a cat?", max_new_tokens=500, cancel_event=event)
    next(stream)
    event.set()
    with pytest.raises(janus_rs.Cancelled):
        for _ in stream:
            pass
    # model.cancel() reaches streams too.
    stream = model.stream_understand(None, "What is a cat?", max_new_tokens=500)
    next(stream)
    assert model.cancel() >= 1
    with pytest.raises(janus_rs.Cancelled):
        stream.read()


def test_keyboard_interrupt_stops_a_call(model):
    progress, seen, t, _ = cancel_at(2, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        model.generate_tokens(PROMPT, temperature=0, progress=progress)
    t.join()
    assert len(seen) <= 3 < model.image_token_count


def test_gil_is_released_during_generate(model):
    """Another Python thread runs while generate_array computes (no callback).

    With a switch interval far longer than the test, CPython never takes the
    GIL from a thread that holds it: the main thread can run before the call
    returns only if the call itself lets go of the GIL."""
    started, finished = threading.Event(), threading.Event()
    outcome = {}

    def worker():
        started.set()
        try:
            # Long enough (1024 images) that it could not end unnoticed; the
            # cancel below ends it.
            model.generate_array(PROMPT, parallel_size=1024, temperature=0)
            outcome["result"] = "finished"
        except janus_rs.Cancelled:
            outcome["result"] = "cancelled"
        finished.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        th = threading.Thread(target=worker)
        th.start()
        # Wakes when the worker lets go of the GIL: inside the call, or at
        # its end if the call held the GIL throughout.
        assert started.wait(60)
        # Each sleep lets go of the GIL and needs it back: ten times while
        # the call is still computing.
        for _ in range(10):
            time.sleep(0.001)
        running_meanwhile = not finished.is_set()
        cancelled = model.cancel()
        th.join(600)
    finally:
        sys.setswitchinterval(interval)
    assert running_meanwhile, "the main thread ran only after generate_array returned"
    assert cancelled == 1 and outcome["result"] == "cancelled", (cancelled, outcome)


def test_one_model_serves_several_threads(model, expected, fixture_dir):
    c_img = expected["cases"]["t2i.apple"]
    want_tokens = c_img["image_tokens"]
    c_txt = expected["cases"]["understand.single"]
    image = fixture_dir / c_txt["conversation"][0]["images"][0]
    question = "Describe this image in detail."
    results, errors = [], []

    def work(i):
        try:
            for _ in range(3):
                if i % 2:
                    got = model.generate_tokens(c_img["prompt"], parallel_size=2, temperature=0).tolist()
                    results.append(got == want_tokens)
                else:
                    got = model.understand(image, question, max_new_tokens=12)
                    results.append(got == c_txt["answer"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 18 and all(results)


def test_cancel_only_affects_its_model(model, fixture_dir):
    other = janus_rs.JanusPro.load(fixture_dir)
    out = {}
    started, cancelled = threading.Event(), threading.Event()

    def progress(step, total):
        started.set()
        assert cancelled.wait(30)  # the other model's cancel() has run

    def run_other():
        out["tokens"] = other.generate_tokens(PROMPT, temperature=0, progress=progress)

    t = threading.Thread(target=run_other)
    t.start()
    assert started.wait(30), "the other model's call did not start"
    assert model.cancel() == 0
    cancelled.set()
    t.join(60)
    assert out["tokens"].shape == (1, other.image_token_count)
    del other
    np.testing.assert_array_equal(out["tokens"], model.generate_tokens(PROMPT, temperature=0))
