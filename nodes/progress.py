"""ComfyUI progress and Cancel for janus_rs calls.

janus_rs calls ``progress(step, total)`` once per generated token. The
bridge forwards each call to a ``comfy.utils.ProgressBar`` (one tick per
token: 576 for a 384x384 image, whatever the batch size) and then runs
ComfyUI's interrupt check, which raises
``comfy.model_management.InterruptProcessingException`` once the user has
pressed Cancel. janus_rs stops at that exception; whatever janus_rs makes of
it (the exception itself or ``janus_rs.Cancelled``), the node ends with
ComfyUI's interrupt exception, so ComfyUI reports "interrupted", not an error.
The ``threading.Event`` handed to janus_rs as ``cancel_event`` is set too.
"""

from __future__ import annotations

import threading

import comfy.model_management
import comfy.utils


class ComfyProgress:
    """``progress(step, total)`` for one or more janus_rs calls on one bar.

    With ``calls`` > 1 (one understanding call per image of a batch), call
    ``start(i)`` before the i-th call: the bar runs over
    ``calls * per_call`` ticks, the i-th call's steps after the previous ones'.
    With ``follow_total`` the bar's length is the ``total`` janus_rs reports
    (the image token count: 576, or 16 for the tiny test model); without it,
    ``per_call`` stays as given (``max_new_tokens`` for an answer).
    """

    def __init__(self, per_call: int, calls: int = 1, follow_total: bool = True):
        self.per_call = max(int(per_call), 1)
        self.follow_total = follow_total
        self.calls = max(int(calls), 1)
        self.index = 0
        self.bar = comfy.utils.ProgressBar(self.per_call * self.calls)
        self.cancel_event = threading.Event()
        self.interrupt: BaseException | None = None

    @property
    def total(self) -> int:
        return self.per_call * self.calls

    def start(self, index: int) -> None:
        self.index = index

    def __call__(self, step: int, total: int | None = None) -> None:
        if total and self.follow_total:
            self.per_call = int(total)
        self.bar.update_absolute(self.index * self.per_call + int(step), self.total)
        self.check_interrupt()

    def finish(self) -> None:
        """Fills the bar (an answer that ended before max_new_tokens)."""
        if self.bar.current < self.total:
            self.bar.update_absolute(self.total, self.total)

    def check_interrupt(self) -> None:
        try:
            comfy.model_management.throw_exception_if_processing_interrupted()
        except BaseException as exc:
            self.interrupt = exc
            self.cancel_event.set()
            raise

    def run(self, fn, *args, **kwargs):
        """``fn(*args, progress=self, cancel_event=self.cancel_event, **kwargs)``,
        ending with ComfyUI's interrupt exception if Cancel stopped it."""
        self.check_interrupt()  # Cancel pressed before the call started
        try:
            return fn(*args, progress=self, cancel_event=self.cancel_event, **kwargs)
        except BaseException as exc:
            if self.interrupt is not None and exc is not self.interrupt:
                raise self.interrupt from exc
            raise
