/*
 * pushgate-web: a browser (and Node.js) client for pushgate's WebSocket access, speaking
 * MPush's JSON packets: {"cmd":N,"flags":16,"sessionId":N,"body":{...}}.
 *
 * It handshakes on every connect, binds the configured user again after each reconnect,
 * reports pushes as events, acknowledges "auto" pushes itself and lets the application
 * acknowledge "biz" ones, and reconnects with exponential backoff (with jitter) when the
 * connection drops. A KICK (the same user bound on another web client) ends the client: it
 * does not reconnect, so two tabs of one user do not take the user from each other forever.
 *
 * No build step: load it with a <script> tag (it defines window.PushgateClient) or require
 * it in Node.js (pass a WebSocket implementation, e.g. the `ws` package, as options.WebSocket).
 */
(function (root, factory) {
  "use strict";
  var api = factory();
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else {
    root.PushgateClient = api.PushgateClient;
    root.PushgateCommand = api.Command;
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  /** MPush's command codes used on the WebSocket link. */
  var Command = {
    HANDSHAKE: 2,
    BIND: 5,
    UNBIND: 6,
    ERROR: 10,
    OK: 11,
    KICK: 13,
    PUSH: 15,
    ACK: 23
  };

  /** Packet flag bits. */
  var Flags = { BIZ_ACK: 4, AUTO_ACK: 8, JSON_BODY: 16 };

  var DEFAULTS = {
    url: null,
    deviceId: null,
    osName: "web",
    osVersion: typeof navigator !== "undefined" ? navigator.userAgent : "node",
    clientVersion: "1.0.0",
    userId: null,
    tags: null,
    /** Acknowledge pushes sent with ack "auto" as soon as they arrive (as MPush's client). */
    autoAck: true,
    /** Reconnect after a dropped connection, waiting minDelayMs, then twice as long each time. */
    reconnect: true,
    minDelayMs: 500,
    maxDelayMs: 30000,
    /** Give up on a connect that has not handshaken in this time. */
    handshakeTimeoutMs: 10000,
    WebSocket: null,
    log: null
  };

  function randomId() {
    var s = "";
    for (var i = 0; i < 16; i++) {
      s += Math.floor(Math.random() * 16).toString(16);
    }
    return "web-" + s;
  }

  function tagsText(tags) {
    if (tags == null) return null;
    if (Array.isArray(tags)) return tags.join(",");
    return String(tags);
  }

  /**
   * A client. options: see DEFAULTS. Events (client.on(name, fn)):
   *   "open", "handshake", "bind" (ok, reason), "unbind" (ok, reason),
   *   "push" (push: {content, sessionId, flags, ack: "none"|"auto"|"biz", acked, ack()}),
   *   "kick" ({userId, deviceId}), "error" (packet body), "close" ({code, reason, willReconnect}),
   *   "reconnecting" ({attempt, delayMs}).
   */
  function PushgateClient(options) {
    var opts = {};
    var key;
    for (key in DEFAULTS) opts[key] = DEFAULTS[key];
    for (key in options || {}) opts[key] = options[key];
    if (!opts.url) throw new Error("PushgateClient: options.url is required");
    if (!opts.deviceId) opts.deviceId = randomId();
    this.options = opts;
    this.state = "idle"; // idle | connecting | open | handshaken | closed
    this.userId = null;
    this._listeners = {};
    this._socket = null;
    this._nextId = 1;
    this._attempt = 0;
    this._timer = null;
    this._handshakeTimer = null;
    this._stopped = false;
  }

  PushgateClient.prototype.on = function (event, fn) {
    (this._listeners[event] = this._listeners[event] || []).push(fn);
    return this;
  };

  PushgateClient.prototype.off = function (event, fn) {
    var list = this._listeners[event] || [];
    this._listeners[event] = list.filter(function (f) { return f !== fn; });
    return this;
  };

  PushgateClient.prototype._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    var list = (this._listeners[event] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i].apply(this, args);
      } catch (e) {
        this._log("listener for " + event + " failed: " + e);
      }
    }
  };

  PushgateClient.prototype._log = function (text) {
    if (this.options.log) this.options.log(text);
  };

  /** Opens the connection (and keeps it open until close()). */
  PushgateClient.prototype.connect = function () {
    this._stopped = false;
    this._open();
    return this;
  };

  PushgateClient.prototype._open = function () {
    var self = this;
    var Impl = this.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
    if (!Impl) throw new Error("PushgateClient: no WebSocket implementation");
    this.state = "connecting";
    var socket = new Impl(this.options.url);
    this._socket = socket;
    socket.onopen = function () {
      if (socket !== self._socket) return;
      self.state = "open";
      self._emit("open");
      self._send(Command.HANDSHAKE, {
        deviceId: self.options.deviceId,
        osName: self.options.osName,
        osVersion: self.options.osVersion,
        clientVersion: self.options.clientVersion
      });
      self._handshakeTimer = setTimeout(function () {
        self._log("no handshake answer in time");
        socket.close();
      }, self.options.handshakeTimeoutMs);
    };
    socket.onmessage = function (event) {
      if (socket !== self._socket) return;
      var packet;
      try {
        packet = JSON.parse(event.data);
      } catch (e) {
        self._log("unreadable packet: " + event.data);
        return;
      }
      self._dispatch(packet);
    };
    socket.onclose = function (event) {
      if (socket !== self._socket) return;
      self._socket = null;
      clearTimeout(self._handshakeTimer);
      var willReconnect = !self._stopped && self.options.reconnect;
      self.state = willReconnect ? "connecting" : "closed";
      self._emit("close", { code: event.code, reason: event.reason, willReconnect: willReconnect });
      if (willReconnect) self._scheduleReconnect();
    };
    socket.onerror = function () {
      self._log("WebSocket error");
    };
  };

  PushgateClient.prototype._scheduleReconnect = function () {
    var self = this;
    var o = this.options;
    var base = Math.min(o.maxDelayMs, o.minDelayMs * Math.pow(2, this._attempt));
    var delayMs = Math.round(base / 2 + Math.random() * base / 2);
    this._attempt += 1;
    this._emit("reconnecting", { attempt: this._attempt, delayMs: delayMs });
    this._timer = setTimeout(function () {
      self._timer = null;
      if (!self._stopped) self._open();
    }, delayMs);
  };

  PushgateClient.prototype._send = function (cmd, body, sessionId) {
    var socket = this._socket;
    var Impl = this.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
    if (!socket || socket.readyState !== (Impl.OPEN || 1)) return false;
    var packet = { cmd: cmd, flags: Flags.JSON_BODY, sessionId: sessionId !== undefined && sessionId !== null ? sessionId : this._nextId++ };
    if (body) packet.body = body;
    socket.send(JSON.stringify(packet));
    return true;
  };

  /** Binds a user (and tags: a comma-separated string or an array) to this client. */
  PushgateClient.prototype.bind = function (userId, tags) {
    this.options.userId = userId;
    this.options.tags = tags;
    if (this.state !== "handshaken") return false; // bound once the handshake is answered
    var body = { userId: userId };
    var text = tagsText(tags);
    if (text) body.tags = text;
    return this._send(Command.BIND, body);
  };

  /** Gives the bound user up. */
  PushgateClient.prototype.unbind = function () {
    var userId = this.userId || this.options.userId;
    this.options.userId = null;
    if (!userId || this.state !== "handshaken") return false;
    return this._send(Command.UNBIND, { userId: userId });
  };

  /** Acknowledges the push with this sessionId (for pushes sent with ack "biz"). */
  PushgateClient.prototype.ack = function (sessionId) {
    return this._send(Command.ACK, null, sessionId);
  };

  /** Closes the connection for good (no reconnect). */
  PushgateClient.prototype.close = function () {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._handshakeTimer);
    this._timer = null;
    if (this._socket) this._socket.close(1000, "client closed");
    else this.state = "closed";
  };

  PushgateClient.prototype._dispatch = function (packet) {
    var self = this;
    var body = packet.body || {};
    switch (packet.cmd) {
      case Command.HANDSHAKE:
        clearTimeout(this._handshakeTimer);
        this.state = "handshaken";
        this._attempt = 0;
        this._emit("handshake");
        if (this.options.userId) this.bind(this.options.userId, this.options.tags);
        break;
      case Command.OK:
        if (body.cmd === Command.BIND) {
          this.userId = this.options.userId;
          this._emit("bind", true, body.data);
        } else if (body.cmd === Command.UNBIND) {
          this.userId = null;
          this._emit("unbind", true, body.data);
        }
        break;
      case Command.ERROR:
        if (body.cmd === Command.BIND) this._emit("bind", false, body.reason);
        else if (body.cmd === Command.UNBIND) this._emit("unbind", false, body.reason);
        this._emit("error", body);
        break;
      case Command.KICK:
        this._emit("kick", { userId: body.userId, deviceId: body.deviceId });
        this.userId = null;
        this.close();
        break;
      case Command.PUSH: {
        var flags = packet.flags || 0;
        var mode = (flags & Flags.AUTO_ACK) ? "auto" : (flags & Flags.BIZ_ACK) ? "biz" : "none";
        var push = {
          content: body.content,
          sessionId: packet.sessionId,
          flags: flags,
          ack: mode,
          acked: false
        };
        push.acknowledge = function () {
          if (push.acked || push.ack === "none") return false;
          push.acked = self.ack(push.sessionId);
          return push.acked;
        };
        if (mode === "auto" && this.options.autoAck) push.acknowledge();
        this._emit("push", push);
        break;
      }
      default:
        break;
    }
  };

  return { PushgateClient: PushgateClient, Command: Command, Flags: Flags };
});
