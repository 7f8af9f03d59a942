"""Stand-in for ``comfy.model_management``: the interrupt flag (what the UI's
Cancel button sets) and the torch device (a plain object with ``type``/``index``)."""

import threading
import types


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False
torch_device = types.SimpleNamespace(type="cpu", index=None)


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def get_torch_device():
    return torch_device
