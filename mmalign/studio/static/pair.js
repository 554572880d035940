"use strict";
// Pair page: which answer is more helpful, which is safer, and ratings for both.
(function () {
  const Studio = window.Studio;
  const keys = {"1": ["more_helpful", "a"], "2": ["more_helpful", "b"], "3": ["safer", "a"], "4": ["safer", "b"]};

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
    const pick = keys[event.key];
    document.querySelector('input[name="' + pick[0] + '"][value="' + pick[1] + '"]').checked = true;
    return true;
  });
})();
