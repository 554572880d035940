"use strict";
// Undo of the signed-in annotator's last submission (header button or the u key outside text
// boxes): the server takes it back and the page opens that item again, filled in as submitted.
(function () {
  const button = document.getElementById("undo");
  const messageEl = document.getElementById("undo-message");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let busy = false;

  async function undo() {
    if (busy || button.disabled) return;
    busy = true;
    messageEl.textContent = "";
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: "{}",
      });
      const result = await response.json().catch(function () { return {}; });
      if (!response.ok) throw new Error(result.error || "the server answered " + response.status);
      window.location.assign(result.next);
    } catch (err) {
      messageEl.textContent = err.message;
      busy = false;
    }
  }

  button.addEventListener("click", undo);
  document.addEventListener("keydown", function (event) {
    const el = document.activeElement;
    const inBox = !!el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
    if (event.key !== "u" || inBox || event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    undo();
  });
})();
