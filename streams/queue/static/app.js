// The support queue's only script (served as a file: the CSP allows 'self', no inline script).
// 1. Times: every <time datetime> in the agent's own time zone, every [data-ago] as "4 min ago".
// 2. The inbox list updates itself every data-refresh seconds from /queue/list, and never
//    replaces a row whose form has focus or typed text (nor an opened list of clients).
// 3. Copy buttons for suggested messages; /ops reloads itself.
"use strict";
(function () {
  function ago(date) {
    const s = (Date.now() - date.getTime()) / 1000;
    const future = s < 0;
    const a = Math.abs(s);
    let text;
    if (a < 45) return future ? "in under a minute" : "just now";
    if (a < 5400) text = Math.max(1, Math.round(a / 60)) + " min";
    else if (a < 172800) text = (a / 3600).toFixed(1) + " h";
    else text = Math.round(a / 86400) + " days";
    return future ? "in " + text : text + " ago";
  }
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.textContent = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
        t.title = d.toISOString();
      }
    });
    root.querySelectorAll("[data-ago]").forEach(function (el) {
      const d = new Date(el.getAttribute("data-ago"));
      if (!isNaN(d)) el.textContent = "(" + ago(d) + ")";
    });
  }
  function busy(node) {
    if (node.contains(document.activeElement) && document.activeElement !== document.body) {
      return true;
    }
    for (const el of node.querySelectorAll("input, textarea")) {
      if (el.type !== "hidden" && el.type !== "checkbox" && el.value !== el.defaultValue) {
        return true;
      }
    }
    for (const sel of node.querySelectorAll("select")) {
      for (const opt of sel.options) if (opt.selected !== opt.defaultSelected) return true;
    }
    for (const d of node.querySelectorAll("details")) if (d.open) return true;
    return false;
  }
  function mergeRows(current, fresh) {
    const old = new Map();
    for (const row of current.querySelectorAll(":scope > [data-key]")) {
      old.set(row.dataset.key, row);
    }
    let prev = null;
    for (const row of Array.from(fresh.children)) {
      const key = row.dataset.key;
      const was = key ? old.get(key) : undefined;
      let placed = row;
      if (was) {
        old.delete(key);
        if (busy(was)) placed = was;
        else was.replaceWith(row);
      } else if (prev) {
        prev.after(row);
      } else {
        current.prepend(row);
      }
      prev = placed;
    }
    for (const row of old.values()) if (!busy(row)) row.remove();
  }
  function update(inbox) {
    fetch(inbox.dataset.src, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        const fresh = document.createElement("div");
        fresh.innerHTML = html;
        localTimes(fresh);
        if (!busy(inbox)) {
          inbox.replaceChildren(...fresh.childNodes);
          return;
        }
        // Someone is typing: only the lists, row by row, leaving their row alone.
        for (const list of fresh.querySelectorAll("[data-list]")) {
          const current = inbox.querySelector("#" + list.id);
          if (current) mergeRows(current, list);
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        const el = document.getElementById(b.dataset.copy);
        if (el && navigator.clipboard) {
          navigator.clipboard.writeText(el.textContent.trim()).then(function () {
            b.textContent = "Copied";
          });
        }
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    copyButtons();
    const inbox = document.getElementById("inbox");
    if (inbox) {
      const every = Math.max(1, parseFloat(inbox.dataset.refresh || "10")) * 1000;
      setInterval(function () { update(inbox); }, every);
    }
    const reload = document.getElementById("reload");
    if (reload) {
      setTimeout(function () { location.reload(); },
        Math.max(1, parseFloat(reload.dataset.refresh || "5")) * 1000);
    }
    setInterval(function () { localTimes(document); }, 30000);
  });
})();
