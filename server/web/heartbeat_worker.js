// heartbeat_worker.js: a metronome for app.js's heartbeat.
//
// Browsers throttle timers of hidden tabs on the main thread (Chromium to
// one wake-up a minute after a few minutes), which would let the server
// close the session as idle (3 heartbeat intervals, 45 s by default).
// Timers in a dedicated worker are not throttled that way, so the worker
// keeps time and the page sends the Ping when told.
// Message in: the interval in ms (0 stops). Message out: "tick".
"use strict";

let timer = null;

self.onmessage = (ev) => {
  clearInterval(timer);
  timer = null;
  const interval = Number(ev.data);
  if (interval > 0) timer = setInterval(() => self.postMessage("tick"), interval);
};
