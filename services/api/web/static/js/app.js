// The page's shell: hash routes, navigation, sign-in state, the live-update banner.

import { session, whenDenied } from "./api.js";
import { fill, h, notice } from "./dom.js";
import { keepDrafts, restoreDrafts } from "./drafts.js";
import * as names from "./names.js";
import { openStream } from "./sse.js";
import * as signin from "./views/signin.js";
import * as people from "./views/people.js";
import * as person from "./views/person.js";
import * as relationship from "./views/relationship.js";
import * as losingTouch from "./views/losing-touch.js";
import * as introductions from "./views/introductions.js";
import * as recordView from "./views/record.js";

const ROUTES = [
  [/^\/signin$/, signin],
  [/^\/people$/, people],
  [/^\/person\/([^/]+)$/, person],
  [/^\/rel\/([^/]+)\/([^/]+)$/, relationship],
  [/^\/losing-touch$/, losingTouch],
  [/^\/introductions$/, introductions],
  [/^\/record$/, recordView],
];

const NAV = [
  ["#/people", "People"],
  ["#/losing-touch", "Losing touch"],
  ["#/introductions", "Introductions"],
  ["#/record", "Record"],
];

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const sessionBox = document.getElementById("session");
const liveBox = document.getElementById("live-state");
const announcer = document.getElementById("announcer");
let cleanups = [];
let bannerTimer = null;

export function announce(text) {
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 30);
}

function showBanner(text, kind, hideAfterMs) {
  clearTimeout(bannerTimer);
  banner.className = `banner ${kind}`;
  banner.textContent = text;
  banner.hidden = false;
  if (hideAfterMs) bannerTimer = setTimeout(() => { banner.hidden = true; }, hideAfterMs);
}

function setLive(text, state, title = "") {
  liveBox.textContent = text;
  liveBox.dataset.state = state;
  liveBox.title = title;
}

let current = 0; // the render in progress or shown; older renders must not touch the page

/** Opens the event stream for the current view; closed when the view changes. */
function live(filters, onMessage, mine = current) {
  if (mine !== current) return { close() {} }; // a view already replaced
  const stream = openStream(filters, onMessage, (s) => {
    if (s.state === "open") setLive("live", "open");
    else if (s.state === "reconnected") {
      setLive("live", "open");
      showBanner("Live updates reconnected.", "ok", 4000);
      onMessage({ kind: "reconnected", data: null, id: null });
    } else if (s.state === "reconnecting") {
      setLive("reconnecting", "reconnecting", s.error ? `Why: ${s.error}` : "");
      const when = s.wait >= 1000 ? ` in ${Math.round(s.wait / 1000)} s` : "";
      const why = s.error ? ` (${s.error})` : "";
      showBanner(`Live updates interrupted; reconnecting${when}…${why}`, "warn");
    } else if (s.state === "denied") {
      setLive("offline", "off", `The event stream refused this token (${s.status}).`);
      showBanner(`The event stream refused this token (${s.status}).`, "error");
    } else if (s.state === "unavailable") {
      setLive("offline", "off", "This server has no event stream: reload the page to see changes.");
    }
  });
  cleanups.push(() => stream.close());
  return stream;
}

let deniedMessage = null;
whenDenied((err) => {
  // What the user typed goes with them to sign-in and comes back after it (drafts.js).
  if (location.hash !== "#/signin") keepDrafts(main, session.workspace, location.hash);
  // The view that met the refusal is over now, not at the next hashchange (a later task): it
  // must not finish drawing, open a stream or take the drafts just kept.
  current += 1;
  session.signOut();
  deniedMessage = signin.deniedText(err.status, session.workspace);
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else render();
});

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/people";
  const [path, qs] = raw.split("?");
  return { path, query: new URLSearchParams(qs || "") };
}

function drawChrome(path) {
  const nav = document.getElementById("nav-links");
  fill(
    nav,
    NAV.map(([href, label]) =>
      h("li", {}, h("a", { href, "aria-current": `#${path}`.startsWith(href) ? "page" : false }, label)),
    ),
  );
  if (!session.token) {
    fill(sessionBox, h("a", { href: "#/signin" }, "Sign in"));
    return;
  }
  const me = session.me;
  fill(
    sessionBox,
    h("span", {}, "workspace ", h("strong", {}, session.workspace)),
    me ? h("span", {}, " · me: ", h("a", { href: `#/person/${encodeURIComponent(me)}` }, names.nameOf(me))) : null,
    " ",
    h("button", {
      type: "button",
      class: "link",
      onclick: () => {
        session.signOut();
        names.forget();
        location.hash = "#/signin";
      },
    }, "Sign out"),
  );
}

async function render() {
  for (const f of cleanups.splice(0)) f();
  const mine = ++current;
  const { path, query } = parseHash();
  if (!session.token && path !== "/signin") {
    location.hash = "#/signin";
    return;
  }
  const found = ROUTES.map(([re, view]) => [path.match(re), view]).find(([m]) => m);
  drawChrome(path);
  if (!found) {
    fill(main, h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, h("a", { href: "#/people" }, "Go to people")));
    main.removeAttribute("aria-busy"); // a slower view replaced by this one left it set
    return;
  }
  const [match, view] = found;
  const params = match.slice(1).map(decodeURIComponent);
  const ctx = {
    params,
    query,
    live: (filters, onMessage) => live(filters, onMessage, mine),
    // What to undo when the view is left (a debounced reload still waiting, say).
    onLeave: (fn) => { if (mine === current) cleanups.push(fn); else fn(); },
    announce,
    // Setting the hash the page already shows fires no hashchange: draw the view again then.
    navigate: (hash) => { if (location.hash === hash) render(); else location.hash = hash; },
    deniedMessage: () => { const m = deniedMessage; deniedMessage = null; return m; },
    refreshChrome: () => drawChrome(path),
  };
  // Each render draws into its own element: a slower, replaced render writes into a
  // detached one and never mixes with the page now shown.
  const box = h("div", { class: "view" });
  fill(main, box);
  main.setAttribute("aria-busy", "true");
  try {
    await view.render(box, ctx);
  } catch (err) {
    if (err?.status === 401 || err?.status === 403) return; // back to sign-in, with the reason
    box.append(notice("error", `Could not load this page: ${err.message || err}`));
    console.error(err);
  } finally {
    if (mine === current) main.removeAttribute("aria-busy");
  }
  if (mine !== current) return;
  if (path !== "/signin" && session.token) offerDrafts(box);
  main.dataset.rendered = location.hash; // this view has drawn what it loads
  document.title = `${box.querySelector("h1")?.textContent || "tieline"} · tieline`;
  // A new view takes the focus to its heading (keyboard and screen-reader users start there),
  // unless the user is already in it: a field clicked while the view's data loaded keeps the
  // focus, or what they type would go to the heading and be lost.
  if (!box.contains(document.activeElement)) box.querySelector("h1")?.focus();
}

/** Gives a view just drawn after sign-in what the user had typed into its forms. */
function offerDrafts(box) {
  const restored = restoreDrafts(box, session.workspace);
  for (const form of restored) {
    // Not a live region: drawn with the view, it would not be read; announce() says it once.
    form.prepend(h("p", { class: "notice info" }, "What you had entered before signing in again is back. Nothing was recorded: submit to record it."));
  }
  if (restored.length) announce("What you had entered before signing in again is back. Nothing was recorded yet.");
}

// The skip link must not change the hash (that is the router's): it moves focus instead.
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", render);
render();
