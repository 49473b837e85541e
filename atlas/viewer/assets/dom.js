/* The page's elements by id: the ids are the page's interface to index.html, its CSS and the browser tests. */

export function byId(id) {
  return document.getElementById(id);
}

// A canvas laid over the atlas, sized to its box at the screen's pixel ratio and cleared: its 2D context, drawing
// in CSS pixels, with the box's width and height.
export function clearedCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx: ctx, width: width, height: height };
}
