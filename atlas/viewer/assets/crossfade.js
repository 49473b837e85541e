/* A short cross-fade between grids while zooming, instead of a jump. The grid shown has the next coarser one
 * opaque beneath it as a backdrop while its own tiles arrive. A change of grid animates only the layers drawn on
 * top: zooming in, the finer grid's layers fade in over the coarser, still opaque; zooming out, the finer fade out
 * over the coarser, already opaque. A layer at opacity t over an opaque one shows t * new + (1 - t) * old: an
 * exact cross-fade. DOM-free but for the animation frame loop: node tests the opacities. */

export const FADE_MS = 300;

// The grids a settled view draws: the one shown and its coarser backdrop.
function settled(count, shown) {
  const out = new Array(count).fill(0);
  if (shown >= 0 && shown < count) out[shown] = 1;
  if (shown - 1 >= 0 && shown - 1 < count) out[shown - 1] = 1;
  return out;
}

// Smooth start and end, so the fade does not pop.
export function ease(t) {
  const s = Math.max(0, Math.min(1, t));
  return s * s * (3 - 2 * s);
}

// Each grid's opacity at progress t (0..1) of the change from grid `from` to grid `shown` (from < 0: none before).
export function levelOpacities(count, shown, from, t) {
  const end = settled(count, shown);
  if (from < 0 || from === shown || t >= 1) return end;
  const start = settled(count, from);
  return end.map((e, k) => {
    if (shown > from) return start[k] ? 1 : e * t;  // zooming in: what was on screen stays, the finer fades in over it
    return e ? 1 : start[k] * (1 - t);  // zooming out: the coarser is there at once, the finer fades out over it
  });
}

// Animate from grid `from` to `shown`, calling apply(opacities) every frame and once at the end; a fade already
// running is replaced (it starts again from what the screen shows: `from` is the grid it was heading to).
export function crossFade(state, count, from, shown, apply, duration = FADE_MS) {
  if (state.frame) cancelAnimationFrame(state.frame);
  state.frame = null;
  if (from < 0 || from === shown || duration <= 0) { apply(levelOpacities(count, shown, -1, 1)); return; }
  const started = performance.now();
  const step = (now) => {
    const t = (now - started) / duration;
    apply(levelOpacities(count, shown, from, ease(t)));
    state.frame = t < 1 ? requestAnimationFrame(step) : null;
  };
  apply(levelOpacities(count, shown, from, 0));
  state.frame = requestAnimationFrame(step);
}
