"use strict";
// Item images at their own resolution: fitted to the panel's width by default (scaled down for
// large images; small ones up to 4x, so a 64 px image is not blown up to fill the screen), with
// zoom out / fit / 1:1 / zoom in and click to toggle fit <-> 1:1.
(function () {
  const STEP = 1.5;
  const MIN = 0.05;
  const MAX = 16;
  const FIT_UPSCALE = 4;

  document.querySelectorAll(".image-view").forEach(function (view) {
    const img = view.querySelector("img");
    const viewport = view.querySelector(".viewport");
    const level = view.querySelector(".zoom-level");
    let scale = null;  // null: fit to the panel

    function fitScale() {
      return Math.min(FIT_UPSCALE, viewport.clientWidth / img.naturalWidth);
    }

    function shown() {
      return scale === null ? fitScale() : scale;
    }

    function apply() {
      if (!img.naturalWidth) return;
      const s = shown();
      img.style.width = Math.round(img.naturalWidth * s) + "px";
      img.style.height = Math.round(img.naturalHeight * s) + "px";
      img.style.imageRendering = s > 1 ? "pixelated" : "auto";
      level.textContent = (scale === null ? "fit · " : "") + Math.round(s * 100) + "% of " +
        img.naturalWidth + "×" + img.naturalHeight;
      view.dataset.scale = String(s);
    }

    function zoom(factor) {
      scale = Math.min(MAX, Math.max(MIN, shown() * factor));
      apply();
    }

    view.querySelector(".zoom-in").addEventListener("click", function () { zoom(STEP); });
    view.querySelector(".zoom-out").addEventListener("click", function () { zoom(1 / STEP); });
    view.querySelector(".zoom-fit").addEventListener("click", function () { scale = null; apply(); });
    view.querySelector(".zoom-actual").addEventListener("click", function () { scale = 1; apply(); });
    img.addEventListener("click", function () { scale = scale === null ? 1 : null; apply(); });
    window.addEventListener("resize", function () { if (scale === null) apply(); });
    if (img.complete) apply(); else img.addEventListener("load", apply);
  });
})();
