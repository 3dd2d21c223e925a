// conscope dashboard: live alerts. Served from /static/live.js (the CSP allows
// no inline script). Listens to /alerts/stream (server-sent events) and puts
// each new alert on top of the table. Every value is set with textContent,
// never parsed as HTML: event names and sections come from scrapers.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var body = document.getElementById("alerts-body");
  if (!status || !body || !window.EventSource) { return; }
  var MAX_ROWS = 200;
  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    if (text !== null) { td.textContent = text; }
    row.appendChild(td);
    return td;
  }
  function add(alert) {
    var placeholder = body.querySelector("tr.placeholder");
    if (placeholder) { placeholder.remove(); }
    var row = document.createElement("tr");
    row.className = "fresh";
    cell(row, alert.at, "time").title = alert.at_full;
    var kind = document.createElement("span");
    kind.className = "kind " + alert.kind;
    kind.textContent = alert.kind_label;
    cell(row, null).appendChild(kind);
    var link = document.createElement("a");
    link.href = alert.event_href;
    link.textContent = alert.event_name;
    cell(row, null).appendChild(link);
    var place = cell(row, alert.place);
    var source = document.createElement("div");
    source.className = "sub";
    source.textContent = alert.source;
    place.appendChild(source);
    cell(row, alert.price, "num price");
    var change = document.createElement("span");
    change.className = "chg " + alert.trend;
    change.textContent = alert.change;
    cell(row, null, "num").appendChild(change);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > MAX_ROWS) { body.deleteRow(body.rows.length - 1); }
  }
  var source = new EventSource(status.getAttribute("data-stream"));
  source.addEventListener("open", function () { status.textContent = "live"; status.className = "live on"; });
  source.addEventListener("error", function () { status.textContent = "reconnecting…"; status.className = "live"; });
  source.addEventListener("alert", function (event) {
    try { add(JSON.parse(event.data)); } catch (e) { /* a malformed message is skipped */ }
  });
}());
