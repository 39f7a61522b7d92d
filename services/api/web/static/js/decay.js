// The strength curve between events, as the model computes it.
//
// Between two events of a pair nothing is added, so the score is the documented closed form
// of the state after the earlier event (DecayState.score_at in
// projections/strength_model.py; docs/strength-model.md, "Lazy scores"):
//
//   p := (fast * 0.5^(d / fast_half_life_days) + slow * 0.5^(d / slow_half_life_days))
//        * reciprocity_factor
//   b := 100 * (1 - exp(-((p / score_scale_points)^score_exponent)))
//   score := b                                         without a rating
//          | (1 - rating_weight) * b + rating_weight * rating * 0.5^(d / rating_half_life_days)
//
// The timeline answers each event's `decay_after`: the model's own score at instants up to
// the next event, which the chart draws as it is (no copy of the formula needed). `scoreAt`
// (the closed form above) and sampling GET .../relationships/{a}/{b}?as_of=T remain as
// fallbacks for a server that does not send them.

const DAY_MS = 86400000;

/** DecayState.score_at: the score at `tMs` of `state` ({at, fast, slow, reciprocity_factor,
 *  rating}) under `params` if nothing happens after `state.at`. */
export function scoreAt(state, params, tMs) {
  if (state.at === null || state.at === undefined) return 0;
  const days = Math.max((tMs - Date.parse(state.at)) / DAY_MS, 0);
  const decay = (halfLife) => (days > 0 ? 0.5 ** (days / halfLife) : 1);
  const points =
    state.fast * decay(params.fast_half_life_days) + state.slow * decay(params.slow_half_life_days);
  const x = (Math.max(points, 0) * state.reciprocity_factor) / params.score_scale_points;
  const behaviour = -100 * Math.expm1(-(x ** params.score_exponent));
  if (state.rating === null || state.rating === undefined) return behaviour;
  const rating = state.rating * decay(params.rating_half_life_days);
  return (1 - params.rating_weight) * behaviour + params.rating_weight * rating;
}

/**
 * Where to evaluate the curve: for each gap between consecutive event times (and from the
 * last event to `endMs`), a few interior instants in proportion to the gap's share of the
 * whole span, plus the instant just before the next event (1 ms earlier: that event does not
 * count yet). At most `budget` instants in all; gaps too short to show a visible decay get
 * none. Returns sorted instants (ms).
 */
export function sampleTimes(eventMs, endMs, budget = 48) {
  const times = [...new Set(eventMs)].sort((a, b) => a - b);
  if (!times.length) return [];
  const span = Math.max(endMs - times[0], 1);
  const gaps = times.map((t, i) => [t, i + 1 < times.length ? times[i + 1] : endMs]);
  const visible = gaps.filter(([a, b]) => (b - a) / span > 1 / 400);
  const rest = Math.max(budget - visible.length, 0); // after one "just before" per gap
  const out = [];
  for (const [a, b] of visible) {
    const interior = Math.min(12, Math.floor(((b - a) / span) * rest));
    for (let j = 1; j <= interior; j++) out.push(a + ((b - a) * j) / (interior + 1));
    if (b !== endMs) out.push(b - 1);
  }
  return out.sort((x, y) => x - y);
}

/**
 * The curve's points [{x, y}] from the events' {x, y: strength_after} points, the decay
 * samples [{x, y}] and the end point (the score at `as_of`): in time order, so the line falls
 * between events and jumps at each event.
 */
export function curvePoints(eventPoints, samples, end) {
  const all = [...eventPoints.map((p) => ({ x: p.x, y: p.y, k: 0 })), ...samples.map((p) => ({ ...p, k: 1 }))];
  all.sort((a, b) => a.x - b.x || a.k - b.k);
  const out = all.map(({ x, y }) => ({ x, y }));
  if (end && (!out.length || end.x >= out[out.length - 1].x)) out.push({ x: end.x, y: end.y });
  return out;
}
