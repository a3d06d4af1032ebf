// idweave review workbench: keyboard shortcuts (hand-written, no dependencies).
// Queue:  j / k move, Enter or o opens, c s m a open the item at that decision's form, / searches.
// Entity: c s m a put the cursor in that decision's form, u in the newest undo, j / k go to
//         the next / previous queue item. Keys are ignored while typing in a field.
(function () {
  "use strict";
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("table.queue tr.item")); }
  function selected() { return document.querySelector("table.queue tr.item.selected"); }
  function select(row) {
    rows().forEach(function (r) { r.classList.remove("selected"); });
    if (row) { row.classList.add("selected"); row.scrollIntoView({block: "nearest"}); }
  }
  function move(step) {
    var all = rows(), cur = selected(), i = all.indexOf(cur);
    if (!all.length) return;
    i = i < 0 ? 0 : Math.min(all.length - 1, Math.max(0, i + step));
    select(all[i]);
  }
  function open(hash) {
    var cur = selected();
    if (cur) window.location.href = cur.getAttribute("data-href") + (hash ? "#" + hash : "");
  }
  function focusForm(id) {
    var form = document.getElementById(id);
    if (!form) return false;
    form.scrollIntoView({block: "center"});
    var field = form.querySelector("input[name=reason]") || form.querySelector("input:not([type=hidden]), select");
    if (field) field.focus();
    return true;
  }
  var forms = {c: "confirm", s: "split-form", m: "merge-form", a: "apart-form"};
  var hashes = {c: "confirm", s: "split", m: "merge", a: "apart"};
  document.addEventListener("click", function (e) {
    var row = e.target.closest && e.target.closest("table.queue tr.item");
    if (row && e.target.tagName !== "A") { select(row); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e)) { if (e.key === "Escape") e.target.blur(); return; }
    var page = document.body.getAttribute("data-page");
    var k = e.key;
    if (page === "queue") {
      if (k === "j") move(1);
      else if (k === "k") move(-1);
      else if (k === "Enter" || k === "o") open("");
      else if (hashes[k]) open(hashes[k]);
      else if (k === "u") window.location.href = "/decisions";
      else if (k === "/") { var q = document.getElementById("q"); if (q) q.focus(); }
      else return;
      e.preventDefault();
    } else if (page === "entity") {
      if (forms[k]) { if (!focusForm(forms[k])) return; }
      else if (k === "u") { var undo = document.querySelector("form.undo input[name=reason]"); if (!undo) return; undo.focus(); }
      else if (k === "j") { var n = document.getElementById("next"); if (!n) return; window.location.href = n.href; }
      else if (k === "k") { var p = document.getElementById("prev"); if (!p) return; window.location.href = p.href; }
      else return;
      e.preventDefault();
    } else if (page === "decisions" && k === "u") {
      var f = document.querySelector("form.undo input[name=reason]"); if (f) { f.focus(); e.preventDefault(); }
    } else if (page === "result" && (k === "j" || k === "Enter")) {
      var nx = document.getElementById("next"); if (nx) { window.location.href = nx.href; e.preventDefault(); }
    }
  });
  // Arriving at an entity with #confirm, #split, #merge or #apart (from the queue's keys).
  // After "load": the browser's own scroll to the fragment comes first and would move focus.
  window.addEventListener("load", function () {
    var want = {"#confirm": "confirm", "#split": "split-form", "#merge": "merge-form", "#apart": "apart-form"}[window.location.hash];
    if (want) window.setTimeout(function () { focusForm(want); }, 0);
  });
})();
