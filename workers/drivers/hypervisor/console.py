"""A VM's serial console as a non-blocking libvirt stream.

libvirt delivers stream events only from its event loop, which has to be
registered before the connection is opened and then run by one thread;
``ensure_event_loop`` starts that thread once per process.  A ``ConsoleStream``
hands the guest's output to a callback from that thread and queues input
without ever blocking its caller: bytes the guest does not take yet wait in a
bounded buffer and go out when libvirt says the stream is writable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import libvirt

from .errors import HypervisorError, InvalidState, NotFound

# One read from the stream: big enough for a screenful, small enough to relay.
READ_CHUNK = 16 * 1024
# Input the guest has not taken yet; past this the session is typing faster
# than the guest reads (a huge paste), and write() refuses it.
MAX_PENDING_INPUT = 1024 * 1024

_READABLE = libvirt.VIR_STREAM_EVENT_READABLE
_WRITABLE = libvirt.VIR_STREAM_EVENT_WRITABLE
_FAILED = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread.

    Call before opening the connection whose streams use events.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class InputOverflow(HypervisorError):
    """More input is waiting than MAX_PENDING_INPUT: the guest does not keep up."""


class ConsoleBusy(HypervisorError):
    """Another session holds the domain's console."""


OutputCallback = Callable[[bytes], None]
ClosedCallback = Callable[[str], None]


class ConsoleStream:
    """The serial console of a running domain.

    ``on_output(data)`` and ``on_closed(reason)`` run on libvirt's event
    thread; ``on_closed`` runs once, when the guest's side ends (the VM
    stopped) or the stream fails, not after ``close()``.
    """

    def __init__(
        self,
        connection: libvirt.virConnect,
        domain_name: str,
        on_output: OutputCallback,
        on_closed: ClosedCallback,
    ) -> None:
        try:
            domain = connection.lookupByName(domain_name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no domain {domain_name}") from error
            raise HypervisorError(str(error)) from error
        if not domain.isActive():
            raise InvalidState(f"{domain_name} is not running")
        self._on_output = on_output
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._reading = True
        self._open = True
        self._stream = connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            # No FORCE flag: a second session must not silently cut off the first.
            domain.openConsole(None, self._stream, 0)
        except libvirt.libvirtError as error:
            self._stream.abort()
            if error.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED:
                raise ConsoleBusy("another console session is open on this VM") from error
            raise HypervisorError(str(error)) from error
        self._stream.eventAddCallback(_READABLE | _FAILED, self._on_event, None)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the guest; raise InputOverflow past the bound."""
        with self._lock:
            if not self._open:
                return
            if len(self._pending) + len(data) > MAX_PENDING_INPUT:
                raise InputOverflow("input arrives faster than the guest reads it")
            self._pending += data
            self._flush_locked()
            self._update_events_locked()

    def set_reading(self, reading: bool) -> None:
        """Pause or resume reading the guest's output (the relay's backpressure)."""
        with self._lock:
            if self._open and reading != self._reading:
                self._reading = reading
                self._update_events_locked()

    def close(self) -> None:
        """End the session from our side; idempotent, no on_closed call."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            self._teardown_locked()

    def _on_event(self, _stream: libvirt.virStream, events: int, _opaque: object) -> None:
        reason = None
        with self._lock:
            if not self._open:
                return
            if events & _WRITABLE:
                reason = self._flush_locked()
            if reason is None and events & _READABLE and self._reading:
                reason = self._read_locked()
            if reason is None and events & _FAILED:
                reason = "the console's connection to the VM ended"
            if reason is None:
                self._update_events_locked()
                return
            self._open = False
            self._teardown_locked()
        self._on_closed(reason)

    def _read_locked(self) -> str | None:
        try:
            data = self._stream.recv(READ_CHUNK)
        except libvirt.libvirtError as error:
            return f"reading the console failed: {error}"
        if data == -2:
            return None
        if not data:
            return "the VM's console ended (the VM stopped)"
        # Called under the lock so output stays in order; the callback must not block.
        self._on_output(data)
        return None

    def _flush_locked(self) -> str | None:
        while self._pending:
            try:
                sent = self._stream.send(bytes(self._pending))
            except libvirt.libvirtError as error:
                return f"writing to the console failed: {error}"
            if sent == -2:
                break
            del self._pending[:sent]
        return None

    def _update_events_locked(self) -> None:
        events = _FAILED
        if self._reading:
            events |= _READABLE
        if self._pending:
            events |= _WRITABLE
        self._stream.eventUpdateCallback(events)

    def _teardown_locked(self) -> None:
        try:
            self._stream.eventRemoveCallback()
            self._stream.abort()
        except libvirt.libvirtError:
            pass  # the stream is already gone with the domain; nothing is left to release
