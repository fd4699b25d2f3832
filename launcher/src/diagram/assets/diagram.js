// The space-time diagram of chat messages, shared by the console's page
// and the HTML of `launcher trace` (the Rust SVG renderer in
// diagram/svg.rs draws the same layout).
//
// ChatDiagram.draw(element, data, room): data = {servers: [1, 2, ...],
// events: [{kind: "post"|"deliver", server, t, id, room, text?}, ...]}
// in the order of the global history. One horizontal line per server;
// one column per event (logical time); each message one colour, from its
// post (a square at the origin) to its delivery at every server (a dot
// numbered with its place in that server's delivery order of the room):
// in `total` a message has the same number everywhere, in `fifo` not.
"use strict";
var ChatDiagram = (function () {
  var NS = "http://www.w3.org/2000/svg";
  var LEFT = 70, TOP = 40, ROW = 70, STEP = 26;

  function colour(id) {
    // The hash of diagram/svg.rs (32-bit FNV-1a over the id's ASCII
    // bytes), so both pictures agree.
    var h = 2166136261;
    for (var i = 0; i < id.length; i++) {
      h = Math.imul(h ^ (id.charCodeAt(i) & 0xff), 16777619) >>> 0;
    }
    return "hsl(" + (h % 360) + ", 70%, 42%)";
  }

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function hms(t) {
    var us = t % 1000000, s = Math.floor(t / 1000000);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(Math.floor(s / 3600)) + ":" + two(Math.floor(s / 60) % 60) + ":" +
      two(s % 60) + "." + String(us).padStart(6, "0");
  }

  function draw(container, data, room) {
    var servers = (data.servers || []).slice().sort(function (a, b) { return a - b; });
    var events = (data.events || []).filter(function (e) { return e.room === room; });
    var row = {};
    servers.forEach(function (s, i) { row[s] = i; });
    var width = Math.max(400, LEFT + STEP * (events.length + 1) + 20);
    var height = TOP + ROW * Math.max(servers.length, 1);
    var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
      "font-family": "sans-serif", "font-size": 11, "class": "chat-diagram"});
    svg.appendChild(el("rect", {width: "100%", height: "100%", fill: "white"}));
    svg.appendChild(el("text", {x: 10, y: 18, "font-size": 14, "font-weight": "bold"},
      "chat room #" + room + (events.length ? "" : ": no messages yet")));
    function y(s) { return TOP + ROW * (row[s] || 0); }
    function x(i) { return LEFT + STEP * (i + 1); }
    servers.forEach(function (s) {
      svg.appendChild(el("text", {x: 10, y: y(s), dy: 4}, "S" + String(s).padStart(2, "0")));
      svg.appendChild(el("line", {x1: LEFT, y1: y(s), x2: width, y2: y(s), stroke: "#888"}));
    });
    var postAt = {}, rank = {};
    events.forEach(function (e, i) {
      if (e.kind === "post") postAt[e.id] = [x(i), y(e.server)];
    });
    events.forEach(function (e, i) {
      var ex = x(i), ey = y(e.server), c = colour(e.id);
      if (e.kind === "post") {
        var r = el("rect", {x: ex - 5, y: ey - 5, width: 10, height: 10, fill: c, "class": "post"});
        r.appendChild(el("title", {}, e.id + " posted at " + hms(e.t) + ": " + (e.text || "")));
        svg.appendChild(r);
        svg.appendChild(el("text", {x: ex, y: ey - 10, "text-anchor": "middle", fill: c},
          (e.text || "").slice(0, 14)));
      } else {
        rank[e.server] = (rank[e.server] || 0) + 1;
        var n = rank[e.server];
        var p = postAt[e.id];
        if (p) {
          svg.appendChild(el("line", {x1: p[0], y1: p[1], x2: ex, y2: ey, stroke: c,
            "stroke-width": 1.5, opacity: 0.7}));
        }
        var d = el("circle", {cx: ex, cy: ey, r: 5, fill: c, "class": "delivery",
          "data-server": e.server, "data-id": e.id, "data-rank": n});
        d.appendChild(el("title", {}, e.id + " delivered at S" + String(e.server).padStart(2, "0") +
          " at " + hms(e.t) + ", #" + n));
        svg.appendChild(d);
        svg.appendChild(el("text", {x: ex, y: ey + 18, "text-anchor": "middle"}, String(n)));
      }
    });
    container.replaceChildren(svg);
    return svg;
  }

  return {draw: draw, colour: colour};
})();
