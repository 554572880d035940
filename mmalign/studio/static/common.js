"use strict";
// Shared by the annotation pages: item data, CSRF-protected JSON posts, keyboard helpers.
// Model text is only ever placed with textContent / createTextNode, never as HTML.
(function () {
  const data = JSON.parse(document.getElementById("item-data").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const messageEl = document.getElementById("message");
  const submitButton = document.getElementById("submit");
  let busy = false;

  function message(text) {
    messageEl.textContent = text || "";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {}),
    });
    let result;
    try {
      result = await response.json();
    } catch (err) {
      result = {};
    }
    if (!response.ok) {
      const where = result.field ? " (" + result.field + ")" : "";
      throw new Error((result.error || "the server answered " + response.status) + where);
    }
    return result;
  }

  async function run(url, body) {
    if (busy) return;
    busy = true;
    message("");
    try {
      const result = await post(url, body);
      window.location.assign(result.next);
    } catch (err) {
      message(err.message);
      busy = false;
    }
  }

  function inTextBox(el) {
    return !!el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  }

  if (data.submitted) {
    submitButton.disabled = true;
    message("You already submitted this item.");
  }

  function skip() {
    run(data.skip_url, {});
  }

  // The keys every page shares (Enter submits, s skips outside a text box); pageKey(event, inBox)
  // handles the page's own keys first and returns true when it did.
  function bindKeys(submit, pageKey) {
    submitButton.addEventListener("click", submit);
    document.addEventListener("keydown", function (event) {
      if (event.isComposing || event.ctrlKey || event.metaKey || event.altKey) return;
      const inBox = inTextBox(document.activeElement);
      if (event.key === "Enter") {
        event.preventDefault();
        submit();
      } else if (!pageKey(event, inBox) && !inBox && event.key === "s") {
        skip();
      }
    });
  }

  window.Studio = {
    data: data,
    message: message,
    bindKeys: bindKeys,
    submit: function (body) {
      if (!data.submitted) run(data.submit_url, body);
    },
    skip: skip,
  };
  document.getElementById("skip").addEventListener("click", skip);
})();
