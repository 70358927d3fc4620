"""What the web side's consumer and a host's relay say to each other over the
channel layer, and the websocket close codes both ends use.

consumer -> relay's host channel:   console.open {session, domain, reply_to}
relay -> consumer:                  console.ready {session, relay}
                                    console.output {data}
                                    console.ended {code, reason}
consumer -> relay (the `relay` channel from console.ready):
                                    console.input {session, data}
                                    console.keepalive {session}
                                    console.close {session}

Shell sessions (`strata ssh`, `exec`, `logs`) on the same layer:
consumer -> relay's shell channel:  shell.open {session, reply_to, endpoint, argv, tty,
                                    cols, rows}  (argv null: a login shell)
relay -> consumer:                  shell.ready {session, relay}
                                    shell.output {data, stream}  (1 stdout, 2 stderr)
                                    shell.exit {status}
                                    shell.ended {code, reason}
consumer -> relay:                  shell.input {session, data}, shell.eof, shell.resize
                                    {cols, rows}, shell.keepalive, shell.close
"""

# Websocket close codes (4000-4999 are the application's own).
CLOSE_NOT_LOGGED_IN = 4401
CLOSE_TICKET_REFUSED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_BUSY = 4409
CLOSE_VM_STOPPED = 4410
CLOSE_INPUT_OVERFLOW = 4413
CLOSE_RELAY_UNAVAILABLE = 4503
CLOSE_CONSOLE_FAILED = 4500
CLOSE_BAD_REQUEST = 4400
CLOSE_FORBIDDEN = CLOSE_TICKET_REFUSED  # a role that may not open it

# The consumer tells the relay it is still there this often; a session the
# relay has not heard of for RELAY_SILENCE_SECONDS lost its web process.
KEEPALIVE_SECONDS = 15
RELAY_SILENCE_SECONDS = 60
# Input goes to the relay in pieces at most this big (the channel layer's
# messages stay small however big a paste is).
INPUT_PIECE = 32 * 1024


def host_channel(host_name: str) -> str:
    """The channel a host's relay listens on for new sessions."""
    return f"console.relay.{host_name}"


def shell_channel(host_name: str) -> str:
    """The channel a host's relay listens on for new shell sessions."""
    return f"shell.relay.{host_name}"
