// The console's page: polls /api/state (nodes, rooms, charts) and
// /api/diagram (the chosen room's last messages) each half second, and
// runs one chat session through /api/chat. No framework: the page is
// rendered by the launcher and this only updates it.
"use strict";
(function () {
  var POLL_MS = 500;

  function text(el, s) { if (el.textContent !== s) el.textContent = s; }
  function kib(k) { return k == null ? "-" : (k / 1024).toFixed(1) + " MiB"; }

  // A small chart: deliveries/s as a line, RSS as a grey area, each on
  // its own scale, over the samples kept (the last minutes).
  function chart(canvas, history) {
    var ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (!history.length) return;
    var n = history.length, dx = w / Math.max(n - 1, 1);
    var maxRss = Math.max.apply(null, history.map(function (s) { return s.rss_kib || 0; })) || 1;
    var maxRate = Math.max.apply(null, history.map(function (s) { return s.deliveries_per_s; })) || 1;
    ctx.fillStyle = "#d8dce3";
    ctx.beginPath(); ctx.moveTo(0, h);
    history.forEach(function (s, i) { ctx.lineTo(i * dx, h - (s.rss_kib || 0) / maxRss * (h - 2)); });
    ctx.lineTo((n - 1) * dx, h); ctx.closePath(); ctx.fill();
    history.forEach(function (s, i) {
      if (!s.up) { ctx.fillStyle = "rgba(192,21,27,0.35)"; ctx.fillRect(i * dx - dx / 2, 0, Math.max(dx, 1), h); }
    });
    ctx.strokeStyle = "#1f6fd1"; ctx.lineWidth = 1.5; ctx.beginPath();
    history.forEach(function (s, i) {
      var y = h - 1 - s.deliveries_per_s / maxRate * (h - 3);
      if (i) ctx.lineTo(i * dx, y); else ctx.moveTo(0, y);
    });
    ctx.stroke();
  }

  function showNodes(view) {
    var body = document.querySelector("#nodes tbody");
    view.nodes.forEach(function (n) {
      var tr = body.querySelector('tr[data-node="' + CSS.escape(n.name) + '"]');
      if (!tr) return;
      var st = tr.querySelector(".status");
      // The supervisor's word; anything but up counts as down.
      text(st, n.status);
      st.className = "status " + (n.up ? "up" : "down");
      text(tr.querySelector(".pid"), n.pid == null ? "-" : String(n.pid));
      text(tr.querySelector(".restarts"), String(n.restarts));
      text(tr.querySelector(".clients"), n.clients == null ? "-" : String(n.clients));
      // Static membership: the view is the configured cluster.
      text(tr.querySelector(".view"), n.view == null ? (n.up ? "static" : "-") : String(n.view));
      text(tr.querySelector(".rss"), kib(n.rss_kib));
      text(tr.querySelector(".retransmissions"), n.retransmissions_per_s == null ? "-" : n.retransmissions_per_s.toFixed(0));
      text(tr.querySelector(".held"), n.held_back == null ? "-" : String(n.held_back));
      text(tr.querySelector(".posts"), n.posts_per_s.toFixed(0));
      text(tr.querySelector(".deliveries"), n.deliveries_per_s.toFixed(0));
      chart(tr.querySelector("canvas"), n.history);
    });
  }

  function showRooms(view) {
    var rooms = {};
    // Only rooms somebody is in (a node serving /metrics lists them all).
    view.nodes.forEach(function (n) {
      Object.keys(n.members).forEach(function (r) { if (n.members[r] > 0) rooms[r] = true; });
    });
    var ids = Object.keys(rooms).map(Number).sort(function (a, b) { return a - b; });
    var t = document.getElementById("rooms");
    var html = "<tr><th>room</th>" + view.nodes.map(function (n) {
      return "<th>" + n.name.replace(/[<>&]/g, "") + "</th>";
    }).join("") + "</tr>";
    if (!ids.length) html += '<tr><td colspan="99" class="hint">nobody in any room yet</td></tr>';
    ids.forEach(function (r) {
      html += '<tr data-room="' + r + '"><td>#' + r + "</td>" + view.nodes.map(function (n) {
        var m = n.members[r];
        return "<td>" + (m == null ? "-" : m) + "</td>";
      }).join("") + "</tr>";
    });
    if (t.innerHTML !== html) t.innerHTML = html;
  }

  var lastDiagram = "";
  function pollDiagram() {
    var room = Number(document.getElementById("diagram-room").value);
    return fetch("/api/diagram?room=" + room).then(function (r) { return r.json(); }).then(function (d) {
      var key = room + ":" + JSON.stringify(d);
      if (key === lastDiagram) return;
      lastDiagram = key;
      ChatDiagram.draw(document.getElementById("diagram"), d, room);
    });
  }

  function poll() {
    Promise.all([
      fetch("/api/state").then(function (r) { return r.json(); }).then(function (v) {
        showNodes(v); showRooms(v);
        text(document.getElementById("clock"), new Date().toISOString().slice(11, 19) + " UTC");
      }),
      pollDiagram()
    ]).catch(function (e) {
      text(document.getElementById("clock"), "launcher unreachable: " + e);
    }).finally(function () { setTimeout(poll, POLL_MS); });
  }

  // Chat: one session per page.
  var session = null, seen = 0;
  var log = document.getElementById("chat-log");
  function addLine(s) {
    var d = document.createElement("div");
    d.className = "line" + (s.indexOf("-ERR") === 0 ? " err" : s.indexOf("+OK") === 0 ? " ok" : "");
    d.textContent = s;
    log.appendChild(d);
    log.scrollTop = log.scrollHeight;
  }
  function pollChat() {
    if (session === null) return;
    fetch("/api/chat/" + session + "/lines?after=" + seen).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (d) {
      d.lines.forEach(function (l) { seen = Math.max(seen, l.seq); addLine(l.text); });
    }).catch(function (e) {
      text(document.getElementById("chat-status"), String(e));
    }).finally(function () { setTimeout(pollChat, 300); });
  }
  document.getElementById("join").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var body = {
      node: Number(document.getElementById("chat-node").value),
      nick: document.getElementById("chat-nick").value,
      room: Number(document.getElementById("chat-room").value)
    };
    var old = session;
    session = null;
    if (old !== null) fetch("/api/chat/" + old + "/leave", {method: "POST"});
    fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (r) { return r.ok ? r.json() : r.text().then(function (t) { throw new Error(t); }); })
      .then(function (j) {
        session = j.session; seen = 0;
        text(document.getElementById("chat-status"), "connected to " + j.server + " as " + body.nick);
        document.getElementById("chat-text").disabled = false;
        document.getElementById("chat-send").disabled = false;
        document.getElementById("diagram-room").value = String(body.room);
        pollChat();
      })
      .catch(function (e) { text(document.getElementById("chat-status"), String(e)); });
  });
  document.getElementById("say").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = document.getElementById("chat-text");
    if (session === null) return;
    fetch("/api/chat/" + session + "/send", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: input.value})}).then(function (r) {
      if (!r.ok) return r.text().then(function (t) { text(document.getElementById("chat-status"), t); });
      input.value = "";
    });
  });
  document.getElementById("diagram-room").addEventListener("change", function () { lastDiagram = ""; pollDiagram(); });
  poll();
})();
