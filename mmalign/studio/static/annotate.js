"use strict";
// Correction page: select spans of the answer with the mouse, type a correction for each.
// Offsets are counted in Unicode code points, like Python string indices on the server.
(function () {
  const Studio = window.Studio;
  const answerEl = document.getElementById("answer");
  const listEl = document.getElementById("corrections");
  const chars = Array.from(Studio.data.answer);
  const marks = [];  // {start, end, text}, sorted by start, never overlapping
  // Kept in step with mmalign.studio.project._word_character, which the server checks spans with.
  const wordChar = /[\p{L}\p{M}\p{N}\p{Pc}]/u;
  const spaceless = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}]/u;

  function inWord(i) {
    return wordChar.test(chars[i]) && !spaceless.test(chars[i]);
  }

  function slice(start, end) {
    return chars.slice(start, end).join("");
  }

  function offsetOf(node, offset) {
    const range = document.createRange();
    range.selectNodeContents(answerEl);
    range.setEnd(node, offset);
    return Array.from(range.toString()).length;
  }

  function renderAnswer() {
    answerEl.textContent = "";
    let cursor = 0;
    marks.forEach(function (mark, i) {
      answerEl.appendChild(document.createTextNode(slice(cursor, mark.start)));
      const el = document.createElement("mark");
      el.textContent = slice(mark.start, mark.end);
      el.title = "correction " + (i + 1);
      answerEl.appendChild(el);
      cursor = mark.end;
    });
    answerEl.appendChild(document.createTextNode(slice(cursor, chars.length)));
  }

  function renderList() {
    listEl.textContent = "";
    marks.forEach(function (mark, i) {
      const li = document.createElement("li");
      const original = document.createElement("span");
      original.className = "original";
      original.textContent = slice(mark.start, mark.end);
      const input = document.createElement("input");
      input.type = "text";
      input.className = "correction";
      input.value = mark.text;
      input.setAttribute("aria-label", "correction " + (i + 1));
      input.addEventListener("input", function () { mark.text = input.value; });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary remove";
      remove.textContent = "remove";
      remove.addEventListener("click", function () { marks.splice(i, 1); render(); });
      li.append(original, document.createTextNode(" → "), input, remove);
      listEl.appendChild(li);
    });
  }

  function render() {
    renderAnswer();
    renderList();
  }

  answerEl.addEventListener("mouseup", function () {
    const selection = window.getSelection();
    if (!selection || selection.rangeCount === 0 || selection.isCollapsed) return;
    const range = selection.getRangeAt(0);
    if (!answerEl.contains(range.startContainer) || !answerEl.contains(range.endContainer)) return;
    let start = offsetOf(range.startContainer, range.startOffset);
    let end = offsetOf(range.endContainer, range.endOffset);
    while (start < end && /\s/.test(chars[start])) start++;
    while (end > start && /\s/.test(chars[end - 1])) end--;
    if (start < end) {  // a mark covers whole words: "the ta" grows to "the table"
      while (start > 0 && inWord(start - 1) && inWord(start)) start--;
      while (end < chars.length && inWord(end - 1) && inWord(end)) end++;
    }
    selection.removeAllRanges();
    if (start >= end) return;
    if (marks.some(function (m) { return start < m.end && m.start < end; })) {
      Studio.message("That overlaps a marked span: remove the mark first.");
      return;
    }
    Studio.message("");
    const mark = {start: start, end: end, text: slice(start, end)};
    marks.push(mark);
    marks.sort(function (a, b) { return a.start - b.start; });
    render();
    const input = listEl.querySelectorAll("input.correction")[marks.indexOf(mark)];
    input.focus();
    input.select();
  });

  function submit() {
    Studio.submit({corrections: marks.map(function (m) { return {start: m.start, end: m.end, text: m.text}; })});
  }

  Studio.bindKeys(submit, function (event, inBox) {
    if (event.key === "Escape" && inBox) {
      document.activeElement.blur();
      answerEl.focus();
      return true;
    }
    if (!inBox && event.key === "Backspace" && marks.length) {
      event.preventDefault();
      marks.pop();
      render();
      return true;
    }
    return false;
  });
  // An undone submission comes back filled in as it was sent.
  if (Studio.data.previous) {
    Studio.data.previous.corrections.forEach(function (c) { marks.push({start: c.start, end: c.end, text: c.text}); });
  }
  render();
})();
