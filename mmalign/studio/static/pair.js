"use strict";
// Pair page: which answer is more helpful, which is safer, and ratings for both.
(function () {
  const Studio = window.Studio;
  const keys = {"1": ["more_helpful", "a"], "2": ["more_helpful", "b"], "3": ["safer", "a"], "4": ["safer", "b"],
                "5": ["more_helpful", "tie"], "6": ["safer", "tie"]};  // 5 and 6 only where the rubric allows ties

  function pick(name, value) {
    const input = document.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input) input.checked = true;
    return !!input;
  }

  function choice(name) {
    const checked = document.querySelector('input[name="' + name + '"]:checked');
    return checked ? checked.value : null;
  }

  function submit() {
    const body = {more_helpful: choice("more_helpful"), safer: choice("safer")};
    const missing = [];
    if (!body.more_helpful) missing.push("more helpful");
    if (!body.safer) missing.push("safer");
    ["a", "b"].forEach(function (side) {
      ["harmless", "helpful"].forEach(function (rating) {
        const value = document.getElementById(side + "_" + rating).value;
        if (value === "") missing.push(rating + " rating of " + side.toUpperCase());
        body[side + "_" + rating] = value === "" ? null : parseInt(value, 10);
      });
    });
    if (missing.length) {
      Studio.message("Still to choose: " + missing.join(", ") + ".");
      return;
    }
    Studio.submit(body);
  }

  Studio.bindKeys(submit, function (event, inBox) {
    if (inBox || !keys[event.key]) return false;
    return pick(keys[event.key][0], keys[event.key][1]);
  });

  // An undone submission comes back filled in as it was sent.
  const previous = Studio.data.previous;
  if (previous) {
    pick("more_helpful", previous.more_helpful);
    pick("safer", previous.safer);
    ["a_harmless", "b_harmless", "a_helpful", "b_helpful"].forEach(function (field) {
      document.getElementById(field).value = String(previous[field]);
    });
  }
})();
