// app.js: the chatd browser client.
//
// Talks chat/1 over the WebSocket bridge of the server that served this page
// (/ws; one binary message = one ClientFrame/ServerFrame body, see
// spec/framing.md), with the codec of chat_proto.js. What it does, by the
// rules of spec/messages.md and spec/states.md:
// - Hello/Welcome, then Register, Login, or Resume with the token kept in
//   localStorage (and the per-conversation cursors, so a reload only
//   receives what it missed);
// - the conversation list (ListConversations) with unread counts and last
//   activity, kept current by pushes; direct chats by username
//   (GetProfile -> CreateConversation) and groups;
// - sending with a random client_msg_id, shown pending until SendAck, and
//   retried with the same id after a reconnect (so never stored twice);
// - live MessagePush, gaps filled with GetHistory(after_seq), older history
//   loaded when scrolling up (GetHistory(before_seq)), MarkRead for what is
//   on screen, MarkDelivered for what arrived, read receipts, typing and
//   presence of direct-chat partners;
// - heartbeats (Ping every heartbeat_interval_ms, Pong to server Pings, a
//   silent connection is dropped) and reconnects with jittered backoff.
"use strict";

(function () {
  const P = window.ChatProto;
  const E = P.enums;
  const $ = (id) => document.getElementById(id);

  const HISTORY_PAGE = 50;
  const LIST_PAGE = 200;
  const LIST_MAX_PAGES = 5;
  const MEMBER_FETCH_BATCH = 16;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const TYPING_REFRESH_MS = 3000;
  const MAX_TOASTS = 5;
  const DEFAULT_HEARTBEAT_MS = 15000;

  const store = {
    get(k) {
      try {
        return window.localStorage.getItem("chatd." + k);
      } catch (_) {
        return null;
      }
    },
    set(k, v) {
      try {
        if (v === null || v === undefined) window.localStorage.removeItem("chatd." + k);
        else window.localStorage.setItem("chatd." + k, v);
      } catch (_) {
        // Private mode or full storage: the page still works, only a reload
        // asks for the password again.
      }
    },
  };

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    window.crypto.getRandomValues(a);
    return P.toHex(a);
  }

  const deviceId = store.get("device") || randomHex(16);
  store.set("device", deviceId);

  // ---------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------

  const state = {
    ws: null,
    welcomed: false,
    authed: false,
    welcome: null,
    nextRequestId: 1,
    pending: new Map(), // request_id -> {resolve, reject}
    me: null, // Profile of the logged-in user
    conversations: new Map(), // String(conversation_id) -> Convo
    openKey: null,
    membersKey: null, // key of the conversation whose members panel is open
    profiles: new Map(), // String(user_id) -> Promise<Profile>
    profileCache: new Map(), // String(user_id) -> Profile, once known
    presence: new Map(), // String(user_id) -> PresenceEvent
    blocked: new Set(), // String(user_id) of the users this user blocked
    outbox: new Map(), // client_msg_id -> pending send, until SendAck
    attempt: 0,
    sessions: 0,
    saveTimer: null,
    reconnectTimer: null,
    countdown: null,
    heartbeatTimer: null,
    lastReceived: 0,
    goAwayDelay: null,
    listRefresh: null,
    typingSentAt: 0,
  };

  class ChatError extends Error {
    constructor(code, message, retryAfterMs) {
      super(P.enumName("ErrorCode", code) + (message ? ": " + message : ""));
      this.code = code;
      this.retryAfterMs = retryAfterMs || 0;
    }
  }
  class Disconnected extends Error {}

  function newConvo(id) {
    return {
      id,
      key: String(id),
      kind: 0,
      title: "",
      lastSeq: 0,
      lastActivity: 0,
      lastMessage: null,
      readSeq: 0,
      myRole: 0,
      members: null, // [user_id] once known
      roles: new Map(), // String(user_id) -> E.Role, with members
      memberCount: 0,
      bannedIds: [], // Conversation.banned_ids: shown to owners and admins only
      messages: new Map(), // seq -> Message
      pendingSends: new Map(), // client_msg_id -> pending send
      loaded: false, // newest page fetched
      oldestSeq: 0,
      hasMore: false,
      loadingOlder: false,
      cursor: 0, // highest seq held with nothing missing below it (down to the loaded range)
      fillingGap: false,
      othersRead: 0,
      othersDelivered: 0,
      receiptsAsked: 0, // seq whose receipt counts were asked for
      typing: new Map(), // String(user_id) -> timer
      mentionCount: 0, // unread mentions of this user (ConversationSummary)
      lastMentionSeq: 0,
      notificationLevel: 0, // E.NotificationLevel
    };
  }

  function unread(c) {
    return Math.max(0, c.lastSeq - c.readSeq);
  }

  // spec/messages.md, ConversationSummary.mention_count: unread messages
  // that mention this user or everyone; own messages never count.
  function mentions(c) {
    return c.readSeq >= c.lastMentionSeq ? 0 : c.mentionCount;
  }

  function mentionsMe(m) {
    if (!state.me || String(m.sender_id) === String(state.me.user_id)) return false;
    const me = String(state.me.user_id);
    return !!m.mention_everyone || (m.mention_ids || []).some((u) => String(u) === me);
  }

  // ---------------------------------------------------------------------
  // Connection
  // ---------------------------------------------------------------------

  function wsUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + "/ws";
  }

  function setStatus(kind, text) {
    const el = $("status");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdown);
    state.reconnectTimer = null;
    setStatus("connecting", "Connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      toast("Cannot open the connection: " + e.message);
      scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => onOpen(ws);
    ws.onmessage = (ev) => onFrame(ws, ev.data);
    ws.onclose = (ev) => onClose(ws, ev);
    ws.onerror = () => {
      // A close event follows; it carries what can be said.
    };
  }

  function sendFrame(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new Disconnected("not connected");
    ws.send(P.encode("ClientFrame", frame));
  }

  // Sends a request and resolves with the reply frame, or rejects with
  // ChatError (an Error reply) or Disconnected.
  function request(name, body) {
    return new Promise((resolve, reject) => {
      const id = state.nextRequestId++;
      try {
        sendFrame({ request_id: id, [name]: body });
      } catch (e) {
        reject(e);
        return;
      }
      state.pending.set(id, { resolve, reject });
    });
  }

  // Fire-and-forget frames (request_id 0): Pong, Typing, MarkDelivered.
  function notify(name, body) {
    try {
      sendFrame({ request_id: 0, [name]: body });
    } catch (_) {
      // Not connected: nothing to report for a hint that only matters live.
    }
  }

  async function onOpen(ws) {
    if (ws !== state.ws) return;
    state.lastReceived = Date.now();
    try {
      const f = await request("hello", {
        protocol_version: 1,
        client_name: "chatd-web",
        client_version: "1",
        capabilities: [],
      });
      if (f.body !== "welcome") throw new Error("unexpected reply to Hello: " + f.body);
      state.welcome = f.welcome;
      state.welcomed = true;
      // Connections made by this page load, for the status tooltip.
      state.sessions++;
      $("status").dataset.sessions = String(state.sessions);
      $("status").title = "connection " + state.sessions + " of this page";
      startHeartbeat();
      const token = store.get("token");
      if (token) {
        setStatus("connecting", "Resuming…");
        await resume(token);
      } else {
        setStatus("online", "Connected");
        showAuth();
      }
    } catch (e) {
      if (e instanceof Disconnected) return;
      toast("Handshake failed: " + e.message);
      ws.close();
    }
  }

  function onClose(ws, ev) {
    if (ws !== state.ws) return;
    state.ws = null;
    state.welcomed = false;
    state.authed = false;
    stopHeartbeat();
    for (const [, p] of state.pending) p.reject(new Disconnected("connection closed"));
    state.pending.clear();
    for (const c of state.conversations.values()) clearTyping(c);
    renderTyping();
    // Presence subscriptions belong to the session: the next one makes them
    // again (refreshList), and until then nothing is known.
    state.presence.clear();
    renderList();
    renderChatHeader();
    if (ev && ev.code && ev.code !== 1000 && ev.code !== 1001 && ev.code !== 1006) {
      toast("Connection closed (" + ev.code + (ev.reason ? ": " + ev.reason : "") + ")");
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    let delay;
    if (state.goAwayDelay !== null) {
      delay = state.goAwayDelay + Math.random() * 1000;
      state.goAwayDelay = null;
    } else {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt));
      delay = base / 2 + Math.random() * (base / 2);
    }
    state.attempt++;
    const until = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setStatus("offline", "Offline, reconnecting in " + left + " s");
    };
    tick();
    state.countdown = setInterval(tick, 1000);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  // The worker that keeps time for the heartbeat (heartbeat_worker.js), or
  // null where workers are unavailable: then a main-thread timer does.
  const metronome = (() => {
    try {
      const w = new Worker("/heartbeat_worker.js");
      w.onmessage = () => heartbeat();
      return w;
    } catch (_) {
      return null;
    }
  })();

  function heartbeatInterval() {
    return (state.welcome && state.welcome.heartbeat_interval_ms) || DEFAULT_HEARTBEAT_MS;
  }

  function heartbeat() {
    if (!state.ws || !state.welcomed) return;
    // The server closes a session silent for 3 intervals; the client
    // likewise gives up on a server it has not heard from for as long.
    if (Date.now() - state.lastReceived > 3 * heartbeatInterval()) {
      state.ws.close();
      return;
    }
    request("ping", { nonce: Date.now() }).catch(() => {});
  }

  function startHeartbeat() {
    stopHeartbeat();
    if (metronome) metronome.postMessage(heartbeatInterval());
    else state.heartbeatTimer = setInterval(heartbeat, heartbeatInterval());
  }

  function stopHeartbeat() {
    if (metronome) metronome.postMessage(0);
    clearInterval(state.heartbeatTimer);
    state.heartbeatTimer = null;
  }

  function onFrame(ws, data) {
    if (ws !== state.ws) return;
    state.lastReceived = Date.now();
    if (typeof data === "string") {
      toast("The server sent a text frame; reconnecting.");
      ws.close(1003, "binary frames only");
      return;
    }
    let f;
    try {
      f = P.decode("ServerFrame", data);
    } catch (e) {
      // spec/framing.md: a client receiving a malformed frame closes and
      // reconnects.
      toast("Malformed frame from the server (" + e.message + "); reconnecting.");
      ws.close(1002, "malformed frame");
      return;
    }
    const rid = f.request_id;
    if (rid !== 0) {
      const p = state.pending.get(rid);
      if (!p) return;
      state.pending.delete(rid);
      if (f.body === "error") p.reject(new ChatError(f.error.code, f.error.message, f.error.retry_after_ms));
      else p.resolve(f);
      return;
    }
    try {
      onPush(f);
    } catch (e) {
      toast("Could not handle a " + f.body + " push: " + e.message);
    }
  }

  function onPush(f) {
    switch (f.body) {
      case "message_push":
        if (f.message_push.message) onMessage(f.message_push.message, true);
        break;
      case "message_edited":
        if (f.message_edited.message) onEdited(f.message_edited.message);
        break;
      case "reaction_event":
        onReaction(f.reaction_event);
        break;
      case "receipt_event":
        onReceipt(f.receipt_event);
        break;
      case "typing_event":
        onTyping(f.typing_event);
        break;
      case "presence_event":
        onPresence(f.presence_event);
        break;
      case "ping":
        // spec/messages.md, Pong: "A client answers a server Ping with
        // request_id 0."
        notify("pong", { nonce: f.ping.nonce });
        break;
      case "go_away":
        state.goAwayDelay = f.go_away.reconnect_after_ms || 0;
        setStatus("offline", "Server restarting…");
        break;
      case "error":
        toast("Server: " + new ChatError(f.error.code, f.error.message).message);
        break;
      default:
        // Pong, ConversationEvent (not sent by this server version) and
        // future pushes need nothing.
        break;
    }
  }

  // ---------------------------------------------------------------------
  // Authentication
  // ---------------------------------------------------------------------

  function device() {
    return { device_id: deviceId, platform: "web" };
  }

  function cursorsForResume() {
    const out = [];
    const seen = new Set();
    for (const c of state.conversations.values()) {
      out.push({ conversation_id: c.id, seq: c.cursor });
      seen.add(c.key);
    }
    // After a reload the page has no conversations yet: the cursors saved
    // by the last session keep Resume from replaying every conversation.
    let saved = {};
    try {
      saved = JSON.parse(store.get("cursors") || "{}") || {};
    } catch (_) {
      saved = {};
    }
    for (const k of Object.keys(saved)) {
      if (!seen.has(k) && /^[0-9]+$/.test(k) && Number.isSafeInteger(saved[k])) {
        out.push({ conversation_id: k, seq: saved[k] });
      }
    }
    return out;
  }

  function saveCursorsSoon() {
    if (state.saveTimer) return;
    state.saveTimer = setTimeout(() => {
      state.saveTimer = null;
      saveCursors();
    }, 1000);
  }

  function saveCursors() {
    const o = {};
    for (const c of state.conversations.values()) o[c.key] = c.cursor;
    store.set("cursors", JSON.stringify(o));
  }

  async function resume(token) {
    let f;
    try {
      f = await request("resume", {
        session_token: token,
        device: device(),
        cursors: cursorsForResume(),
      });
    } catch (e) {
      if (e instanceof ChatError && e.code === E.ErrorCode.TOKEN_INVALID) {
        forgetLogin();
        showAuth("Your session has ended. Please log in again.");
        setStatus("online", "Connected");
        return;
      }
      throw e;
    }
    await loggedIn(f.resume_ok.auth, f.resume_ok.sync);
  }

  async function authenticate(kind) {
    const username = $("username").value.trim();
    const password = $("password").value;
    const err = $("auth-error");
    err.textContent = "";
    if (!state.welcomed) {
      err.textContent = "Not connected to the server yet; wait a moment.";
      return;
    }
    const body = { username, password, device: device() };
    if (kind === "register") body.display_name = $("display-name").value.trim();
    setAuthBusy(true);
    try {
      const f = await request(kind, body);
      store.set("cursors", null);
      await loggedIn(f.auth_ok, null);
      $("password").value = "";
    } catch (e) {
      err.textContent = authErrorText(e);
    } finally {
      setAuthBusy(false);
    }
  }

  function authErrorText(e) {
    if (e instanceof ChatError) {
      switch (e.code) {
        case E.ErrorCode.INVALID_CREDENTIALS:
          return "Wrong username or password.";
        case E.ErrorCode.USERNAME_TAKEN:
          return "That username is taken.";
        case E.ErrorCode.TOO_MANY_LOGIN_ATTEMPTS:
          return "Too many attempts; try again in " + Math.ceil(e.retryAfterMs / 1000) + " s.";
        case E.ErrorCode.INVALID_ARGUMENT:
          return "Invalid input: " + e.message;
        default:
          return e.message;
      }
    }
    if (e instanceof Disconnected) return "Connection lost; try again when it is back.";
    return e.message;
  }

  function setAuthBusy(busy) {
    $("login-btn").disabled = busy;
    $("register-btn").disabled = busy;
  }

  async function loggedIn(auth, sync) {
    state.authed = true;
    state.attempt = 0;
    state.me = auth.profile || { user_id: auth.user_id, username: "", display_name: "" };
    state.me.user_id = auth.user_id;
    state.profileCache.set(String(auth.user_id), state.me);
    state.profiles.set(String(auth.user_id), Promise.resolve(state.me));
    store.set("token", auth.session_token);
    setStatus("online", "Online");
    showApp();
    if (sync) applySync(sync);
    await refreshList();
    // Sends that were not acknowledged before the connection dropped are
    // retried with the same client_msg_id: the server stores each once.
    for (const p of state.outbox.values()) if (p.state === "pending") transmit(p);
    const open = state.openKey && state.conversations.get(state.openKey);
    if (open) {
      if (!open.loaded) loadNewest(open).catch((e) => historyError(e));
      markReadIfVisible(open);
    }
  }

  function forgetLogin() {
    $("password-result").textContent = "";
    $("password-box").open = false;
    store.set("token", null);
    store.set("cursors", null);
    state.me = null;
    state.conversations.clear();
    state.openKey = null;
    state.outbox.clear();
    state.presence.clear();
    renderList();
    renderChat();
  }

  async function logout() {
    try {
      await request("logout", { all_devices: false });
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("Logout: " + e.message);
    }
    state.authed = false;
    forgetLogin();
    showAuth();
  }

  // ---------------------------------------------------------------------
  // Profiles, presence
  // ---------------------------------------------------------------------

  function profile(userId) {
    const key = String(userId);
    let p = state.profiles.get(key);
    if (!p) {
      p = request("get_profile", { user_id: userId }).then((f) => {
        state.profileCache.set(key, f.profile);
        return f.profile;
      });
      p.catch(() => state.profiles.delete(key));
      state.profiles.set(key, p);
    }
    return p;
  }

  function nameOf(userId) {
    const p = state.profileCache.get(String(userId));
    // spec/messages.md, DeleteAccount: messages stay, from a deleted user.
    if (p && p.deleted) return "Deleted user";
    if (p) return p.display_name || p.username;
    profile(userId)
      .then(() => {
        renderList();
        renderChat();
      })
      .catch(() => {});
    return "user " + userId;
  }

  function peerOf(c) {
    if (c.kind !== E.ConversationKind.DIRECT || !c.members || !state.me) return null;
    const mine = String(state.me.user_id);
    const other = c.members.find((u) => String(u) !== mine);
    return other === undefined ? null : other;
  }

  function titleOf(c) {
    if (c.title) return c.title;
    const peer = peerOf(c);
    if (peer !== null) return nameOf(peer);
    if (c.kind === E.ConversationKind.DIRECT) return "Direct chat";
    return "Conversation " + c.key;
  }

  function onPresence(ev) {
    state.presence.set(String(ev.user_id), ev);
    renderList();
    renderChatHeader();
  }

  function presenceText(userId) {
    const ev = state.presence.get(String(userId));
    if (!ev) return "";
    switch (ev.status) {
      case E.PresenceStatus.ONLINE:
        return "online";
      case E.PresenceStatus.AWAY:
        return "away";
      case E.PresenceStatus.BUSY:
        return "busy";
      default:
        return ev.last_seen_ms ? "last seen " + formatTime(ev.last_seen_ms) : "offline";
    }
  }

  function isOnline(userId) {
    const ev = state.presence.get(String(userId));
    return !!ev && ev.status !== E.PresenceStatus.OFFLINE && ev.status !== 0;
  }

  async function watchPresence(userIds) {
    const want = userIds.filter((u) => !state.presence.has(String(u))).slice(0, 1000);
    if (want.length === 0) return;
    try {
      await request("subscribe_presence", { user_ids: want });
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("Presence: " + e.message);
    }
  }

  // ---------------------------------------------------------------------
  // Conversation list
  // ---------------------------------------------------------------------

  function applySummary(s) {
    let c = state.conversations.get(String(s.conversation_id));
    if (!c) {
      c = newConvo(s.conversation_id);
      c.cursor = s.last_seq;
      state.conversations.set(c.key, c);
    }
    c.kind = s.kind;
    c.title = s.title;
    c.myRole = s.my_role;
    c.lastSeq = Math.max(c.lastSeq, s.last_seq);
    c.lastActivity = Math.max(c.lastActivity, s.last_activity_ms);
    if (s.last_message && (!c.lastMessage || s.last_message.seq >= c.lastMessage.seq)) {
      c.lastMessage = s.last_message;
    }
    c.readSeq = Math.max(c.readSeq, s.read_seq);
    c.mentionCount = s.mention_count || 0;
    c.lastMentionSeq = c.mentionCount ? s.last_seq : 0;
    c.notificationLevel = s.notification_level || 0;
    if (!c.loaded) c.cursor = Math.max(c.cursor, s.last_seq);
    return c;
  }

  function applyConversation(conv) {
    let c = state.conversations.get(String(conv.conversation_id));
    if (!c) {
      c = newConvo(conv.conversation_id);
      c.cursor = conv.last_seq;
      c.readSeq = conv.last_seq;
      state.conversations.set(c.key, c);
    }
    c.kind = conv.kind;
    c.title = conv.title;
    c.myRole = conv.my_role;
    c.members = conv.members.map((m) => m.user_id);
    c.roles = new Map(conv.members.map((m) => [String(m.user_id), m.role]));
    c.memberCount = conv.member_count;
    c.bannedIds = conv.banned_ids;
    c.lastSeq = Math.max(c.lastSeq, conv.last_seq);
    c.lastActivity = Math.max(c.lastActivity, conv.created_at_ms);
    return c;
  }

  async function refreshBlocked() {
    const f = await request("list_blocked", {});
    state.blocked = new Set(f.blocked_users.user_ids.map((u) => String(u)));
    renderChatHeader();
  }

  async function refreshList() {
    refreshBlocked().catch(() => {});
    let before = 0;
    for (let page = 0; page < LIST_MAX_PAGES; page++) {
      const f = await request("list_conversations", { limit: LIST_PAGE, before_activity_ms: before });
      const list = f.conversation_list;
      for (const s of list.conversations) applySummary(s);
      before = list.next_before_activity_ms;
      if (!before) break;
    }
    renderList();
    saveCursors();
    // Direct chats are named after the partner: fetch their members once,
    // a few requests at a time (well under the server's in-flight limit).
    const unnamed = Array.from(state.conversations.values()).filter(
      (c) => c.kind === E.ConversationKind.DIRECT && !c.members,
    );
    for (let i = 0; i < unnamed.length; i += MEMBER_FETCH_BATCH) {
      const batch = unnamed.slice(i, i + MEMBER_FETCH_BATCH);
      const results = await Promise.allSettled(
        batch.map((c) => request("get_conversation", { conversation_id: c.id })),
      );
      for (const r of results) {
        if (r.status === "fulfilled") applyConversation(r.value.conversation);
        else if (r.reason instanceof Disconnected) return;
      }
    }
    const peers = [];
    for (const c of state.conversations.values()) {
      const peer = peerOf(c);
      if (peer !== null) peers.push(peer);
    }
    renderList();
    renderChatHeader();
    await watchPresence(peers);
  }

  // Coalesces list refreshes asked for by pushes of unknown conversations.
  function scheduleListRefresh() {
    if (state.listRefresh) return;
    state.listRefresh = setTimeout(() => {
      state.listRefresh = null;
      if (state.authed) refreshList().catch((e) => listError(e));
    }, 50);
  }

  function listError(e) {
    if (!(e instanceof Disconnected)) toast("Conversation list: " + e.message);
  }

  async function startDirect(username) {
    const f = await request("get_profile", { user_id: 0, username });
    const other = f.profile;
    state.profileCache.set(String(other.user_id), other);
    const cf = await request("create_conversation", {
      kind: E.ConversationKind.DIRECT,
      member_ids: [other.user_id],
      title: "",
    });
    const c = applyConversation(cf.conversation);
    renderList();
    openConversation(c.key);
    watchPresence([other.user_id]);
  }

  async function startGroup(title, usernames) {
    const ids = [];
    for (const u of usernames) {
      let f;
      try {
        f = await request("get_profile", { user_id: 0, username: u });
      } catch (e) {
        if (e instanceof ChatError && e.code === E.ErrorCode.NOT_FOUND) throw new Error("no user named " + u);
        throw e;
      }
      state.profileCache.set(String(f.profile.user_id), f.profile);
      ids.push(f.profile.user_id);
    }
    const cf = await request("create_conversation", {
      kind: E.ConversationKind.GROUP,
      member_ids: ids,
      title,
    });
    const c = applyConversation(cf.conversation);
    renderList();
    openConversation(c.key);
  }

  // ---------------------------------------------------------------------
  // Messages
  // ---------------------------------------------------------------------

  // Stores a message (dropping duplicates by seq) and updates the
  // conversation's summary. `live` is true for pushes.
  function onMessage(m, live) {
    const key = String(m.conversation_id);
    const c = state.conversations.get(key);
    if (!c) {
      // A conversation this page does not know yet (someone started it).
      scheduleListRefresh();
      return;
    }
    const mine = state.me && String(m.sender_id) === String(state.me.user_id);
    if (mine && m.client_msg_id) {
      c.pendingSends.delete(m.client_msg_id);
    }
    if (live && m.seq > c.readSeq && m.seq > c.lastMentionSeq && mentionsMe(m)) {
      c.mentionCount = mentions(c) + 1;
      c.lastMentionSeq = m.seq;
    }
    if (m.seq > c.lastSeq) c.lastSeq = m.seq;
    if (!c.lastMessage || m.seq >= c.lastMessage.seq) {
      c.lastMessage = m;
      c.lastActivity = Math.max(c.lastActivity, m.sent_at_ms);
    }
    const deletes = m.kind === E.MessageKind.SYSTEM && m.system &&
      m.system.kind === E.SystemEventKind.MESSAGE_DELETED;
    if (deletes) {
      // The message it names is gone for everyone: drop its content here.
      const target = c.messages.get(m.system.target_seq);
      if (target) {
        target.deleted = true;
        target.text = "";
        target.media = undefined;
        target.ciphertext = new Uint8Array(0);
        target.reactions = [];
      }
    }
    if (m.kind === E.MessageKind.SYSTEM && live && !deletes) {
      // Membership or title changed: reload the conversation's metadata.
      request("get_conversation", { conversation_id: c.id })
        .then((f) => {
          applyConversation(f.conversation);
          renderList();
          renderChatHeader();
        })
        .catch(() => {});
    }
    // Kept even before the conversation's history is loaded: a push that
    // arrives while the first page is in flight may be missing from it.
    if (!c.messages.has(m.seq)) c.messages.set(m.seq, m);
    if (c.loaded) {
      advanceCursor(c);
      if (live && m.seq > c.cursor + 1) fillGap(c);
    } else if (m.seq === c.cursor + 1) {
      c.cursor = m.seq;
    }
    if (live && m.kind === E.MessageKind.SYSTEM && m.system && removesMe(m.system, m.sender_id)) {
      dropConversation(c, "You are no longer a member of " + titleOf(c) + ".");
      return;
    }
    if (live && !mine) {
      notify("mark_delivered", { conversation_id: c.id, seq: m.seq });
      const t = c.typing.get(String(m.sender_id));
      if (t) {
        clearTimeout(t);
        c.typing.delete(String(m.sender_id));
        renderTyping();
      }
    }
    if (live) {
      renderList();
      if (state.openKey === key) renderMessages({ stick: mine });
      saveCursorsSoon();
    }
  }

  // spec/messages.md, MessageEdited: the message keeps its seq; the copy
  // with the larger edited_at_ms is the latest. Not a new message: no
  // cursor, unread count or notification changes.
  function onEdited(m) {
    const key = String(m.conversation_id);
    const c = state.conversations.get(key);
    if (!c) return;
    const held = c.messages.get(m.seq);
    if (held && !held.deleted && (held.edited_at_ms || 0) < m.edited_at_ms) {
      held.text = m.text;
      held.edited_at_ms = m.edited_at_ms;
    }
    if (c.lastMessage && c.lastMessage.seq === m.seq && !c.lastMessage.deleted) {
      c.lastMessage = Object.assign({}, c.lastMessage, { text: m.text, edited_at_ms: m.edited_at_ms });
    }
    renderList();
    if (state.openKey === key) renderMessages({});
  }

  // spec/messages.md, ReactionEvent: the counts after the change for every
  // member alike; whether each is mine is kept from what was shown, and
  // changed only for this user's own reaction.
  function onReaction(e) {
    const key = String(e.conversation_id);
    const c = state.conversations.get(key);
    const m = c && c.messages.get(e.seq);
    if (!m) return;
    const mineBefore = new Set((m.reactions || []).filter((r) => r.mine).map((r) => r.emoji));
    if (state.me && String(e.user_id) === String(state.me.user_id)) {
      if (e.removed) mineBefore.delete(e.emoji);
      else mineBefore.add(e.emoji);
    }
    m.reactions = (e.reactions || []).map((r) => ({
      emoji: r.emoji,
      count: r.count,
      mine: mineBefore.has(r.emoji),
    }));
    if (state.openKey === key) renderMessages({});
  }

  // Whether a SYSTEM event ends the user's membership (spec/messages.md:
  // the removed or leaving user receives the event as its last message).
  function removesMe(sys, senderId) {
    if (!state.me) return false;
    const me = String(state.me.user_id);
    const K = E.SystemEventKind;
    if (sys.kind === K.MEMBER_REMOVED || sys.kind === K.MEMBER_BANNED) {
      return sys.user_ids.some((u) => String(u) === me);
    }
    if (sys.kind === K.MEMBER_LEFT) {
      const who = sys.user_ids.length ? sys.user_ids : [sys.actor_id || senderId];
      return who.some((u) => String(u) === me);
    }
    return false;
  }

  function dropConversation(c, why) {
    state.conversations.delete(c.key);
    if (state.openKey === c.key) state.openKey = null;
    if (state.membersKey === c.key) state.membersKey = null;
    clearTyping(c);
    toast(why);
    renderList();
    renderChat();
    saveCursors();
  }

  function advanceCursor(c) {
    while (c.messages.has(c.cursor + 1)) c.cursor++;
  }

  // Fetches everything after the cursor (spec/states.md: clients fetch the
  // gap when a push skips seqs).
  async function fillGap(c) {
    if (c.fillingGap) return;
    c.fillingGap = true;
    try {
      for (;;) {
        const f = await request("get_history", {
          conversation_id: c.id,
          after_seq: c.cursor,
          limit: 200,
        });
        const page = f.message_page;
        for (const m of page.messages) onMessage(m, false);
        if (page.messages.length > 0) c.cursor = Math.max(c.cursor, page.messages[page.messages.length - 1].seq);
        advanceCursor(c);
        if (!page.has_more || page.messages.length === 0) break;
      }
      if (state.openKey === c.key) renderMessages({});
      renderList();
      saveCursorsSoon();
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("Catching up: " + e.message);
    } finally {
      c.fillingGap = false;
    }
  }

  function applySync(sync) {
    for (const gap of sync.gaps) {
      const c = state.conversations.get(String(gap.conversation_id));
      if (!c) continue; // the list refresh that follows brings it
      for (const m of gap.messages) onMessage(m, false);
      if (c.loaded && gap.truncated) fillGap(c);
      else if (!c.loaded) c.cursor = Math.max(c.cursor, gap.to_seq);
    }
    for (const id of sync.removed_conversation_ids) {
      const key = String(id);
      state.conversations.delete(key);
      if (state.openKey === key) state.openKey = null;
    }
    renderList();
    renderChat();
  }

  function historyError(e) {
    if (!(e instanceof Disconnected)) toast("History: " + e.message);
  }

  async function loadNewest(c) {
    const f = await request("get_history", { conversation_id: c.id, limit: HISTORY_PAGE });
    const page = f.message_page;
    c.loaded = true;
    for (const m of page.messages) if (!c.messages.has(m.seq)) c.messages.set(m.seq, m);
    c.hasMore = page.has_more;
    c.oldestSeq = page.messages.length ? page.messages[page.messages.length - 1].seq : page.last_seq + 1;
    c.cursor = Math.max(c.cursor, page.messages.length ? page.messages[0].seq : page.last_seq);
    advanceCursor(c);
    if (page.last_seq > c.lastSeq) c.lastSeq = page.last_seq;
    if (state.openKey === c.key) renderMessages({ stick: true });
    loadReceipts(c);
  }

  // Receipts of messages sent before this page load are not pushed again:
  // ask for the counts of the user's newest message (spec/messages.md,
  // GetReceipts). "Read" means read by at least one other member.
  async function loadReceipts(c) {
    if (!state.me) return;
    const me = String(state.me.user_id);
    let newest = 0;
    for (const [seq, m] of c.messages) {
      if (String(m.sender_id) === me && m.kind === E.MessageKind.USER && seq > newest) newest = seq;
    }
    if (newest === 0 || newest <= c.othersRead || newest === c.receiptsAsked) return;
    c.receiptsAsked = newest;
    try {
      const f = await request("get_receipts", { conversation_id: c.id, seq: newest });
      const r = f.receipt_counts;
      // The counts include the user's own cursors.
      const selfRead = c.readSeq >= newest ? 1 : 0;
      if (r.read_count - selfRead > 0) c.othersRead = Math.max(c.othersRead, newest);
      if (r.delivered_count - selfRead > 0) c.othersDelivered = Math.max(c.othersDelivered, newest);
      if (state.openKey === c.key) renderMessages({});
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("Receipts: " + e.message);
    }
  }

  async function loadOlder(c) {
    if (c.loadingOlder || !c.hasMore || c.oldestSeq <= 1) return;
    c.loadingOlder = true;
    renderHistoryStatus(c);
    try {
      const f = await request("get_history", {
        conversation_id: c.id,
        before_seq: c.oldestSeq,
        limit: HISTORY_PAGE,
      });
      const page = f.message_page;
      for (const m of page.messages) if (!c.messages.has(m.seq)) c.messages.set(m.seq, m);
      if (page.messages.length) c.oldestSeq = page.messages[page.messages.length - 1].seq;
      c.hasMore = page.has_more && page.messages.length > 0;
      if (state.openKey === c.key) renderMessages({ keepOffset: true });
      loadReceipts(c);
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("History: " + e.message);
    } finally {
      c.loadingOlder = false;
      if (state.openKey === c.key) renderHistoryStatus(c);
    }
  }

  // Keeps loading older pages until the message list can scroll, so that
  // scrolling up is possible at all.
  function fillViewport(c) {
    const box = $("messages-scroll");
    if (c.hasMore && !c.loadingOlder && box.scrollHeight <= box.clientHeight + 10) loadOlder(c);
  }

  function sendText(c, text) {
    const limit = state.welcome ? state.welcome.max_message_bytes : 65536;
    if (new TextEncoder().encode(text).length > limit) {
      toast("The message is longer than the server accepts (" + limit + " bytes).");
      return false;
    }
    // "@username" among the members whose profiles are known, and
    // "@everyone" in groups, become the message's mentions.
    const mentionIds = [];
    let mentionEveryone = false;
    for (const [, word] of text.matchAll(/@([a-z0-9_.-]{3,32})/g)) {
      if (word === "everyone" && c.kind === E.ConversationKind.GROUP) {
        mentionEveryone = true;
        continue;
      }
      for (const u of c.members || []) {
        const prof = state.profileCache.get(String(u));
        if (prof && prof.username === word && !mentionIds.some((x) => String(x) === String(u))) {
          mentionIds.push(u);
        }
      }
    }
    const p = {
      client_msg_id: randomHex(16),
      conversation_id: c.id,
      key: c.key,
      text,
      mention_ids: mentionIds.slice(0, 50),
      mention_everyone: mentionEveryone,
      created_ms: Date.now(),
      state: "pending",
      error: "",
      // Cleared once transmitted: every later transmission is a retry.
      first: true,
    };
    state.outbox.set(p.client_msg_id, p);
    c.pendingSends.set(p.client_msg_id, p);
    renderMessages({ stick: true });
    transmit(p);
    return true;
  }

  async function transmit(p) {
    if (!state.authed) return; // sent after the next login or resume
    p.state = "pending";
    const first = p.first;
    p.first = false;
    try {
      const f = await request("send_message", {
        conversation_id: p.conversation_id,
        client_msg_id: p.client_msg_id,
        text: p.text,
        first_attempt: first,
        mention_ids: p.mention_ids || [],
        mention_everyone: !!p.mention_everyone,
      });
      onAck(p, f.send_ack);
    } catch (e) {
      if (e instanceof Disconnected) return; // retried on resume
      if (e instanceof ChatError && e.code === E.ErrorCode.RATE_LIMITED) {
        setTimeout(() => transmit(p), Math.max(200, e.retryAfterMs));
        return;
      }
      p.state = "failed";
      p.error = e.message;
      toast("Message not sent: " + e.message);
      if (state.openKey === p.key) renderMessages({});
    }
  }

  function onAck(p, ack) {
    state.outbox.delete(p.client_msg_id);
    const c = state.conversations.get(p.key);
    if (!c) return;
    c.pendingSends.delete(p.client_msg_id);
    // The push of this message may have come first; otherwise the ack
    // alone says it is stored.
    onMessage(
      {
        conversation_id: ack.conversation_id,
        seq: ack.seq,
        message_id: ack.message_id,
        sender_id: state.me ? state.me.user_id : 0,
        sent_at_ms: ack.sent_at_ms,
        client_msg_id: ack.client_msg_id,
        kind: E.MessageKind.USER,
        text: p.text,
        system: undefined,
      },
      true,
    );
  }

  function markReadIfVisible(c) {
    if (document.visibilityState !== "visible" || state.openKey !== c.key || !state.authed) return;
    const seq = c.lastSeq;
    if (seq <= c.readSeq) return;
    c.readSeq = seq;
    renderList();
    request("mark_read", { conversation_id: c.id, seq }).catch((e) => {
      if (!(e instanceof Disconnected)) toast("Mark read: " + e.message);
    });
  }

  function onReceipt(ev) {
    const c = state.conversations.get(String(ev.conversation_id));
    if (!c) return;
    const mine = state.me && String(ev.user_id) === String(state.me.user_id);
    if (mine) {
      if (ev.kind === E.ReceiptKind.READ && ev.seq > c.readSeq) c.readSeq = ev.seq;
      renderList();
      return;
    }
    if (ev.kind === E.ReceiptKind.READ) {
      c.othersRead = Math.max(c.othersRead, ev.seq);
      c.othersDelivered = Math.max(c.othersDelivered, ev.seq);
    } else if (ev.kind === E.ReceiptKind.DELIVERED) {
      c.othersDelivered = Math.max(c.othersDelivered, ev.seq);
    }
    if (state.openKey === c.key) renderMessages({});
  }

  function onTyping(ev) {
    const c = state.conversations.get(String(ev.conversation_id));
    if (!c) return;
    const key = String(ev.user_id);
    clearTimeout(c.typing.get(key));
    c.typing.delete(key);
    if (ev.active) {
      c.typing.set(
        key,
        setTimeout(() => {
          c.typing.delete(key);
          renderTyping();
        }, ev.expires_in_ms || 5000),
      );
    }
    renderTyping();
  }

  function clearTyping(c) {
    for (const t of c.typing.values()) clearTimeout(t);
    c.typing.clear();
  }

  function typingInput() {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (!c || !state.authed) return;
    const empty = $("message-input").value.trim() === "";
    const now = Date.now();
    if (empty) {
      if (state.typingSentAt) notify("typing", { conversation_id: c.id, active: false });
      state.typingSentAt = 0;
    } else if (now - state.typingSentAt > TYPING_REFRESH_MS) {
      state.typingSentAt = now;
      notify("typing", { conversation_id: c.id, active: true });
    }
  }

  // ---------------------------------------------------------------------
  // Rendering
  // ---------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function formatTime(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (d.toDateString() === now.toDateString()) return hm;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
  }

  function systemText(m) {
    const s = m.system;
    if (!s) return "(system message)";
    const actor = nameOf(s.actor_id || m.sender_id);
    const users = s.user_ids.map(nameOf).join(", ");
    const K = E.SystemEventKind;
    switch (s.kind) {
      case K.CREATED:
        return actor + " created the conversation";
      case K.MEMBER_ADDED:
        return actor + " added " + users;
      case K.MEMBER_REMOVED:
        return actor + " removed " + users;
      case K.MEMBER_LEFT:
        return actor + " left";
      case K.ROLE_CHANGED:
        return actor + " made " + users + " " + P.enumName("Role", s.role).toLowerCase();
      case K.TITLE_CHANGED:
        return actor + " renamed the conversation to “" + s.title + "”";
      case K.OWNERSHIP_TRANSFERRED:
        return actor + " handed ownership to " + users;
      case K.MESSAGE_DELETED:
        return actor + " deleted a message";
      case K.MEMBER_BANNED:
        return actor + " banned " + users;
      default:
        return actor + " changed the conversation";
    }
  }

  function previewOf(c) {
    const m = c.lastMessage;
    if (!m) return "";
    if (m.kind === E.MessageKind.SYSTEM) return systemText(m);
    const who = state.me && String(m.sender_id) === String(state.me.user_id) ? "You: " : "";
    if (m.deleted) return who + "[deleted]";
    if (m.text) return who + m.text;
    if (m.media) return who + "[attachment]";
    if (m.ciphertext && m.ciphertext.length) return who + "[encrypted]";
    return who;
  }

  // Drawing is coalesced: a burst of pushes (a backlog, a sync) costs one
  // redraw per animation frame, not one per message, so the page's event
  // loop (and with it the heartbeat) never stalls behind rendering. The
  // timeout is the fallback where no frames are produced (hidden tabs).
  const draw = { list: false, header: false, messages: null, scheduled: false };

  function scheduleDraw() {
    if (draw.scheduled) return;
    draw.scheduled = true;
    window.requestAnimationFrame(flushDraw);
    setTimeout(flushDraw, 200);
  }

  function flushDraw() {
    if (!draw.scheduled) return;
    draw.scheduled = false;
    if (draw.list) {
      draw.list = false;
      drawList();
    }
    if (draw.header) {
      draw.header = false;
      drawChatHeader();
    }
    const opts = draw.messages;
    if (opts) {
      draw.messages = null;
      drawMessages(opts);
      const c = state.openKey && state.conversations.get(state.openKey);
      if (c) {
        // What was just drawn is what the user sees.
        markReadIfVisible(c);
        fillViewport(c);
      }
    }
  }

  function renderList() {
    draw.list = true;
    scheduleDraw();
  }

  function renderChatHeader() {
    draw.header = true;
    scheduleDraw();
  }

  function renderMessages(opts) {
    const prev = draw.messages || {};
    draw.messages = { stick: !!(prev.stick || opts.stick), keepOffset: !!(prev.keepOffset || opts.keepOffset) };
    scheduleDraw();
  }

  function drawList() {
    const ul = $("conversations");
    const list = Array.from(state.conversations.values()).sort(
      (a, b) => b.lastActivity - a.lastActivity || b.lastSeq - a.lastSeq,
    );
    ul.replaceChildren();
    let total = 0;
    for (const c of list) {
      const li = el("li", "conversation" + (c.key === state.openKey ? " active" : ""));
      li.dataset.id = c.key;
      const title = el("span", "title", titleOf(c));
      const peer = peerOf(c);
      if (peer !== null) {
        const dot = el("span", "presence-dot", "●");
        dot.dataset.online = String(isOnline(peer));
        dot.title = presenceText(peer);
        title.append(dot);
      }
      li.append(title, el("span", "time", formatTime(c.lastActivity)), el("span", "preview", previewOf(c)));
      const n = unread(c);
      total += n;
      const badge = el("span", "unread", String(n));
      badge.hidden = n === 0;
      const at = mentions(c);
      const mention = el("span", "mentions", "@" + (at >= 1000 ? "1000+" : String(at)));
      mention.hidden = at === 0;
      mention.title = "Unread mentions of you";
      li.append(mention, badge);
      li.addEventListener("click", () => openConversation(c.key));
      ul.append(li);
    }
    $("conversations-empty").hidden = list.length > 0;
    document.title = (total ? "(" + total + ") " : "") + "chatd";
  }

  function openConversation(key) {
    const c = state.conversations.get(key);
    if (!c) return;
    state.openKey = key;
    state.typingSentAt = 0;
    renderList();
    renderChat();
    if (!c.loaded) loadNewest(c).catch((e) => historyError(e)); else {
      markReadIfVisible(c);
    }
    if (!c.members && c.kind !== E.ConversationKind.CHANNEL) {
      request("get_conversation", { conversation_id: c.id })
        .then((f) => {
          applyConversation(f.conversation);
          renderList();
          renderChatHeader();
        })
        .catch((e) => {
          if (!(e instanceof Disconnected)) toast("Conversation: " + e.message);
        });
    }
    $("message-input").focus();
  }

  function renderChat() {
    const c = state.openKey && state.conversations.get(state.openKey);
    $("chat-empty").hidden = !!c;
    $("chat").hidden = !c;
    if (!c) return;
    renderChatHeader();
    renderMessages({ stick: true });
    renderTyping();
  }

  function drawChatHeader() {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (!c) return;
    $("chat-title").textContent = titleOf(c);
    const peer = peerOf(c);
    let sub;
    if (peer !== null) sub = presenceText(peer);
    else if (c.kind === E.ConversationKind.GROUP) sub = c.members ? countText(c.members.length, "member") : "";
    else if (c.kind === E.ConversationKind.CHANNEL) sub = "channel";
    else sub = "";
    $("chat-subtitle").textContent = sub;
    // spec/messages.md, SetNotificationLevel.
    const notify = $("notify-select");
    notify.value = String(c.notificationLevel || E.NotificationLevel.ALL);
    notify.onchange = () => {
      const level = Number(notify.value);
      request("set_notification_level", { conversation_id: c.id, level, muted_until_ms: 0 })
        .then(() => {
          c.notificationLevel = level;
        })
        .catch((e) => toast("Could not change notifications: " + e.message));
    };
    // spec/messages.md, BlockUser: only a direct chat's partner is blocked.
    const blockBtn = $("block-btn");
    blockBtn.hidden = peer === null;
    if (peer !== null) {
      const isBlocked = state.blocked.has(String(peer));
      blockBtn.textContent = isBlocked ? "Unblock" : "Block";
      blockBtn.onclick = () => {
        request(isBlocked ? "unblock_user" : "block_user", { user_id: peer })
          .then(refreshBlocked)
          .catch((e) => toast("Could not " + (isBlocked ? "unblock: " : "block: ") + e.message));
      };
    }
    const membersBtn = $("members-btn");
    membersBtn.hidden = c.kind === E.ConversationKind.DIRECT;
    const panelOpen = !membersBtn.hidden && state.membersKey === c.key;
    membersBtn.setAttribute("aria-expanded", String(panelOpen));
    $("members-panel").hidden = !panelOpen;
    if (panelOpen) drawMembers(c);
    const canPost =
      c.kind !== E.ConversationKind.CHANNEL || c.myRole === E.Role.OWNER || c.myRole === E.Role.ADMIN;
    $("message-input").disabled = !canPost;
    $("send-btn").disabled = !canPost;
    $("message-input").placeholder = canPost ? "Write a message…" : "Only admins post in this channel";
  }

  function countText(n, noun) {
    return n + " " + noun + (n === 1 ? "" : "s");
  }

  // ---------------------------------------------------------------------
  // Members panel (groups and channels)
  // ---------------------------------------------------------------------

  const ROLE_ORDER = [E.Role.OWNER, E.Role.ADMIN, E.Role.MEMBER, E.Role.SUBSCRIBER];

  function roleName(role) {
    return P.enumName("Role", role).toLowerCase();
  }

  function canModerate(c) {
    return c.kind !== E.ConversationKind.DIRECT && (c.myRole === E.Role.OWNER || c.myRole === E.Role.ADMIN);
  }

  // spec/messages.md, BanMember: the owner or an admin bans; an admin does
  // not ban another admin, and nobody bans the owner or themselves.
  function canBan(c, userId, role) {
    if (!canModerate(c) || !state.me || String(userId) === String(state.me.user_id)) return false;
    if (role === E.Role.OWNER) return false;
    if (role === E.Role.ADMIN) return c.myRole === E.Role.OWNER;
    return true;
  }

  // The name shown for a user, with "@username" when it differs.
  function memberLabel(userId) {
    const box = el("span", "member-name", nameOf(userId));
    const p = state.profileCache.get(String(userId));
    if (p && !p.deleted && p.username && p.display_name && p.display_name !== p.username) {
      box.append(" ", el("span", "member-username", "@" + p.username));
    }
    if (state.me && String(userId) === String(state.me.user_id)) {
      box.append(" ", el("span", "member-you", "(you)"));
    }
    return box;
  }

  function drawMembers(c) {
    const members = (c.members || []).slice();
    const rank = (u) => {
      const i = ROLE_ORDER.indexOf(c.roles.get(String(u)));
      return i < 0 ? ROLE_ORDER.length : i;
    };
    // By role, then by id: the order does not move as names arrive.
    members.sort((a, b) => rank(a) - rank(b) || String(a).localeCompare(String(b), "en", { numeric: true }));
    const count = c.memberCount || members.length;
    $("members-heading").textContent = c.kind === E.ConversationKind.CHANNEL
      ? "Channel: " + countText(count, "subscriber")
      : "Members (" + count + ")";
    const list = $("members-list");
    list.replaceChildren();
    for (const u of members) {
      const role = c.roles.get(String(u)) || 0;
      const li = el("li", "member");
      li.dataset.userId = String(u);
      li.dataset.role = roleName(role);
      li.append(memberLabel(u), el("span", "member-role", roleName(role)), el("span", "spacer"));
      if (canBan(c, u, role)) {
        const name = nameOf(u);
        const ban = el("button", "ban-btn danger small", "Ban");
        ban.type = "button";
        ban.setAttribute("aria-label", "Ban " + name);
        ban.addEventListener("click", () => moderate(c, "ban_member", u, name));
        li.append(ban);
      }
      list.append(li);
    }
    // Channels do not list their subscribers (Conversation.members is
    // empty): their owners and admins ban by username below.
    const note = $("members-note");
    note.hidden = c.kind !== E.ConversationKind.CHANNEL;
    note.textContent = "Channels do not list their subscribers.";
    const bans = $("bans");
    bans.hidden = !canModerate(c);
    if (bans.hidden) return;
    const banned = $("banned-list");
    banned.replaceChildren();
    for (const u of c.bannedIds) {
      const name = nameOf(u);
      const li = el("li", "banned");
      li.dataset.userId = String(u);
      li.append(memberLabel(u), el("span", "spacer"));
      const unban = el("button", "unban-btn secondary small", "Unban");
      unban.type = "button";
      unban.setAttribute("aria-label", "Unban " + name);
      unban.addEventListener("click", () => moderate(c, "unban_member", u, name));
      li.append(unban);
      banned.append(li);
    }
    $("banned-empty").hidden = c.bannedIds.length > 0;
  }

  // Fetches the conversation again (members, roles, bans) and redraws.
  async function refreshConversation(c) {
    const f = await request("get_conversation", { conversation_id: c.id });
    applyConversation(f.conversation);
    renderList();
    renderChatHeader();
  }

  // BanMember or UnbanMember of one user, then the conversation is fetched
  // again so that the panel and the member count show the result.
  async function moderate(c, kind, userId, name) {
    const ban = kind === "ban_member";
    if (ban && !window.confirm("Ban " + name + " from " + titleOf(c) + "? They are removed and cannot " +
        "rejoin or be added until unbanned.")) {
      return;
    }
    try {
      await request(kind, { conversation_id: c.id, user_id: userId });
    } catch (e) {
      toast("Could not " + (ban ? "ban " : "unban ") + name + ": " + e.message);
      return;
    }
    try {
      await refreshConversation(c);
    } catch (e) {
      if (!(e instanceof Disconnected)) toast("Members: " + e.message);
    }
  }

  function toggleMembers() {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (!c) return;
    if (state.membersKey === c.key) {
      state.membersKey = null;
    } else {
      state.membersKey = c.key;
      refreshConversation(c).catch((e) => {
        if (!(e instanceof Disconnected)) toast("Members: " + e.message);
      });
    }
    renderChatHeader();
  }

  function renderHistoryStatus(c) {
    const b = $("history-status");
    if (!c.loaded) {
      b.textContent = "Loading…";
      b.disabled = true;
    } else if (c.loadingOlder) {
      b.textContent = "Loading older messages…";
      b.disabled = true;
    } else if (c.hasMore) {
      b.textContent = "Scroll up or click for older messages";
      b.disabled = false;
    } else {
      b.textContent = "Start of the conversation";
      b.disabled = true;
    }
  }

  function statusText(c, m) {
    if (m.seq <= c.othersRead) return "✓✓ read";
    if (m.seq <= c.othersDelivered) return "✓✓";
    return "✓";
  }

  function drawMessages(opts) {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (!c) return;
    const box = $("messages-scroll");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const fromBottom = box.scrollHeight - box.scrollTop;
    const ol = $("messages");
    ol.replaceChildren();
    const seqs = Array.from(c.messages.keys()).sort((a, b) => a - b);
    const me = state.me ? String(state.me.user_id) : "";
    const group = c.kind !== E.ConversationKind.DIRECT;
    for (const seq of seqs) {
      const m = c.messages.get(seq);
      const li = el("li", "message");
      li.dataset.seq = String(seq);
      if (m.kind === E.MessageKind.SYSTEM) {
        li.classList.add("system");
        li.textContent = systemText(m);
      } else {
        const mine = String(m.sender_id) === me;
        if (mine) li.classList.add("mine");
        li.dataset.state = "sent";
        if (m.client_msg_id) li.dataset.clientId = m.client_msg_id;
        if (group && !mine) li.append(el("span", "sender", nameOf(m.sender_id)));
        let text = m.text;
        if (!text && m.media) text = "[attachment]";
        if (!text && m.ciphertext && m.ciphertext.length) text = "[encrypted message]";
        if (m.deleted) {
          li.classList.add("deleted");
          text = "This message was deleted";
        }
        li.append(el("span", "text", text));
        if (m.timeText === undefined) m.timeText = formatTime(m.sent_at_ms);
        const edited = m.edited_at_ms && !m.deleted ? " (edited)" : "";
        const meta = el("span", "meta", m.timeText + edited + (mine ? " " + statusText(c, m) : ""));
        li.append(meta);
        if (!m.deleted) {
          const chips = el("span", "reactions");
          for (const r of m.reactions || []) {
            const chip = el("button", "reaction" + (r.mine ? " mine" : ""), r.emoji + " " + r.count);
            chip.type = "button";
            chip.title = r.mine ? "Remove your reaction" : "React with " + r.emoji;
            chip.addEventListener("click", () => {
              request("react", { conversation_id: c.id, seq: m.seq, emoji: r.emoji, remove: r.mine })
                .catch((e) => toast("Could not react: " + e.message));
            });
            chips.append(chip);
          }
          const add = el("button", "react", "+");
          add.type = "button";
          add.title = "Add a reaction";
          add.addEventListener("click", () => {
            const emoji = window.prompt("React with", "👍");
            if (!emoji) return;
            request("react", { conversation_id: c.id, seq: m.seq, emoji: emoji, remove: false })
              .catch((e) => toast("Could not react: " + e.message));
          });
          chips.append(add);
          li.append(chips);
        }
        if (mine && !m.deleted && m.text) {
          const edit = el("button", "edit", "Edit");
          edit.type = "button";
          edit.title = "Edit the text";
          edit.addEventListener("click", () => {
            const text = window.prompt("Edit message", m.text);
            if (text === null || text === m.text) return;
            request("edit_message", { conversation_id: c.id, seq: m.seq, text: text })
              .catch((e) => toast("Could not edit the message: " + e.message));
          });
          li.append(edit);
        }
        if (mine && !m.deleted) {
          const del = el("button", "delete", "Delete");
          del.type = "button";
          del.title = "Delete for everyone";
          del.addEventListener("click", () => {
            request("delete_message", { conversation_id: c.id, seq: m.seq })
              .catch((e) => toast("Could not delete the message: " + e.message));
          });
          li.append(del);
        }
      }
      ol.append(li);
    }
    const pend = Array.from(c.pendingSends.values()).sort((a, b) => a.created_ms - b.created_ms);
    for (const p of pend) {
      const li = el("li", "message mine");
      li.dataset.state = p.state;
      li.dataset.clientId = p.client_msg_id;
      li.append(el("span", "text", p.text));
      const meta = el("span", "meta", p.state === "failed" ? "failed, click to retry" : "sending…");
      if (p.state === "failed") {
        meta.title = p.error;
        meta.addEventListener("click", () => {
          p.state = "pending";
          renderMessages({});
          transmit(p);
        });
      }
      li.append(meta);
      ol.append(li);
    }
    renderHistoryStatus(c);
    if (opts.stick) box.scrollTop = box.scrollHeight;
    else if (opts.keepOffset) box.scrollTop = box.scrollHeight - fromBottom;
    else if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function renderTyping() {
    const c = state.openKey && state.conversations.get(state.openKey);
    const line = $("typing");
    if (!c || c.typing.size === 0) {
      line.textContent = "";
      return;
    }
    const names = Array.from(c.typing.keys()).map(nameOf);
    line.textContent = names.join(", ") + (names.length === 1 ? " is typing…" : " are typing…");
  }

  function toast(text) {
    const box = $("errors");
    const t = el("div", "error-toast");
    t.setAttribute("role", "alert");
    const close = el("button", "", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => t.remove());
    t.append(el("span", "", text), close);
    box.append(t);
    while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
    setTimeout(() => t.remove(), 15000);
  }

  function showAuth(message) {
    $("auth").hidden = false;
    $("app").hidden = true;
    $("me").hidden = true;
    $("logout-btn").hidden = true;
    $("auth-error").textContent = message || "";
  }

  function showApp() {
    $("auth").hidden = true;
    $("app").hidden = false;
    const me = state.me;
    $("me").textContent = me.display_name || me.username;
    $("me").dataset.userId = String(me.user_id);
    $("me").hidden = false;
    $("logout-btn").hidden = false;
    renderList();
    renderChat();
  }

  // ---------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------

  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const which = ev.submitter && ev.submitter.value === "register" ? "register" : "login";
    authenticate(which);
  });

  $("logout-btn").addEventListener("click", () => logout());

  $("new-direct").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("direct-username");
    const username = input.value.trim().toLowerCase();
    if (!username) return;
    try {
      await startDirect(username);
      input.value = "";
    } catch (e) {
      if (e instanceof ChatError && e.code === E.ErrorCode.NOT_FOUND) toast("No user named " + username);
      else toast("Could not start the chat: " + e.message);
    }
  });

  $("new-group").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const title = $("group-title").value.trim();
    const names = $("group-members")
      .value.split(/[\s,]+/)
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s && (!state.me || s !== state.me.username));
    try {
      await startGroup(title, names);
      $("group-title").value = "";
      $("group-members").value = "";
      $("group-box").open = false;
    } catch (e) {
      toast("Could not create the group: " + e.message);
    }
  });

  $("change-password").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = $("password-result");
    result.textContent = "";
    try {
      await request("change_password", {
        current_password: $("current-password").value,
        new_password: $("new-password").value,
      });
      $("current-password").value = "";
      $("new-password").value = "";
      result.textContent = "Password changed. Your other devices were signed out.";
    } catch (e) {
      if (e instanceof ChatError && e.code === E.ErrorCode.INVALID_CREDENTIALS) {
        result.textContent = "The current password is wrong.";
      } else {
        result.textContent = "Could not change the password: " + e.message;
      }
    }
  });

  $("delete-account").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = $("delete-account-result");
    result.textContent = "";
    if (!window.confirm("Delete your account? Your messages stay, shown as from a deleted user.")) return;
    try {
      await request("delete_account", { password: $("delete-password").value });
      $("delete-password").value = "";
      state.authed = false;
      forgetLogin();
      showAuth();
    } catch (e) {
      if (e instanceof ChatError && e.code === E.ErrorCode.INVALID_CREDENTIALS) {
        result.textContent = "The password is wrong.";
      } else {
        result.textContent = "Could not delete the account: " + e.message;
      }
    }
  });

  $("members-btn").addEventListener("click", () => toggleMembers());

  $("ban-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const c = state.openKey && state.conversations.get(state.openKey);
    const input = $("ban-username");
    const username = input.value.trim().toLowerCase();
    if (!c || !username) return;
    let f;
    try {
      f = await request("get_profile", { user_id: 0, username });
    } catch (e) {
      if (e instanceof ChatError && e.code === E.ErrorCode.NOT_FOUND) toast("No user named " + username);
      else toast("Could not ban " + username + ": " + e.message);
      return;
    }
    state.profileCache.set(String(f.profile.user_id), f.profile);
    input.value = "";
    await moderate(c, "ban_member", f.profile.user_id, f.profile.display_name || username);
  });

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = state.openKey && state.conversations.get(state.openKey);
    const input = $("message-input");
    const text = input.value.trim();
    if (!c || !text) return;
    if (sendText(c, text)) {
      input.value = "";
      if (state.typingSentAt) notify("typing", { conversation_id: c.id, active: false });
      state.typingSentAt = 0;
    }
  });

  $("message-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("message-input").addEventListener("input", typingInput);

  $("messages-scroll").addEventListener("scroll", () => {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (c && $("messages-scroll").scrollTop < 80) loadOlder(c);
  });
  $("history-status").addEventListener("click", () => {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (c) loadOlder(c);
  });

  document.addEventListener("visibilitychange", () => {
    const c = state.openKey && state.conversations.get(state.openKey);
    if (c) markReadIfVisible(c);
    // A tab coming back may have slept through its timers: check now.
    if (document.visibilityState === "visible" && !state.ws && state.reconnectTimer) connect();
  });

  window.addEventListener("online", () => {
    if (!state.ws) connect();
  });

  connect();
})();
