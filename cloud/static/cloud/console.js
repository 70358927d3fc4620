// The VM page's interactive serial console: a ticket from the page's own
// session (POST with the CSRF token), then a websocket that carries terminal
// bytes as binary frames and the server's events (ready, ended) as JSON text.
(function () {
  "use strict";
  const panel = document.getElementById("console-live");
  if (!panel) return;
  const status = panel.querySelector("[data-console-status]");
  const button = panel.querySelector("[data-console-open]");
  const screen = panel.querySelector("[data-console-screen]");
  const csrf = panel.querySelector("input[name=csrfmiddlewaretoken]").value;
  const encoder = new TextEncoder();
  let term = null;
  let fit = null;
  let socket = null;
  let canType = false;

  function say(text) { status.textContent = text; }

  function terminal() {
    if (term) return term;
    term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, rows: 24 });
    fit = new (window.FitAddon.FitAddon || window.FitAddon)();
    term.loadAddon(fit);
    term.open(screen);
    fit.fit();
    window.addEventListener("resize", function () { fit.fit(); });
    // Typed keys and pastes alike arrive here; a read-only session sends nothing.
    term.onData(function (data) {
      if (socket && socket.readyState === WebSocket.OPEN && canType) socket.send(encoder.encode(data));
    });
    return term;
  }

  function onEvent(event) {
    if (event.event === "ready") {
      canType = event.can_type;
      term.options.disableStdin = !canType;
      say(canType ? "Connected: type into the console." : "Connected read-only: your role may watch, not type.");
      term.focus();
    } else if (event.event === "ended") {
      term.write("\r\n\x1b[1m[console ended: " + event.reason + "]\x1b[0m\r\n");
      say("Console ended: " + event.reason);
    }
  }

  async function open() {
    button.disabled = true;
    say("Opening the console…");
    terminal();
    let answer;
    try {
      answer = await fetch(panel.dataset.ticketUrl, {
        method: "POST", headers: { "X-CSRFToken": csrf }, credentials: "same-origin",
      });
    } catch (error) {
      say("Could not ask for a console ticket: " + error);
      button.disabled = false;
      return;
    }
    const body = await answer.json().catch(function () { return {}; });
    if (!answer.ok) {
      const errors = body.errors ? Object.values(body.errors).flat().join(" ") : answer.statusText;
      say("The console cannot open: " + errors);
      button.disabled = false;
      return;
    }
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + body.websocket_path + "?ticket=" + encodeURIComponent(body.ticket));
    socket.binaryType = "arraybuffer";
    socket.onmessage = function (message) {
      if (typeof message.data === "string") onEvent(JSON.parse(message.data));
      else term.write(new Uint8Array(message.data));
    };
    socket.onclose = function (closed) {
      canType = false;
      if (!status.textContent.startsWith("Console ended")) {
        say("Disconnected" + (closed.reason ? ": " + closed.reason : " (code " + closed.code + ")"));
      }
      button.textContent = "Reconnect";
      button.disabled = false;
      socket = null;
    };
  }

  button.addEventListener("click", open);
  // Leaving the page ends the session at once rather than at the relay's timeout.
  window.addEventListener("pagehide", function () { if (socket) socket.close(1000); });
})();
