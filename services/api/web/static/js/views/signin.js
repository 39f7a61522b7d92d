// Sign in with an API token (kept in sessionStorage for this tab, sent as a bearer token).

import { ApiError, ROUTES, api, session } from "../api.js";
import { add, field, h, notice } from "../dom.js";
import { returnTo } from "../drafts.js";
import * as names from "../names.js";

/** What to tell the user when the API refuses their token. */
export function deniedText(status, workspace) {
  if (status === 401) {
    return "The API did not accept this token (401 Unauthorized). Check that you pasted the whole " +
      "token (it starts with tl_) and that it has not been revoked. `tieline up` prints an admin " +
      "token for workspace \"default\"; `tieline token create` makes others.";
  }
  if (status === 403) {
    return `This token is valid, but not for workspace "${workspace}" (403 Forbidden). Sign in ` +
      "with the workspace the token was made for, or ask an admin for a token of this workspace.";
  }
  if (status === 429) {
    return "Too many failed sign-in attempts from this address (429). Wait a minute and try again.";
  }
  return `Sign-in failed (HTTP ${status}).`;
}

export async function render(main, ctx) {
  const denied = ctx.deniedMessage();
  const token = h("input", { type: "password", name: "token", required: true, autocomplete: "off", spellcheck: "false" });
  const workspace = h("input", { type: "text", name: "workspace", required: true, value: session.workspace, pattern: "[a-z0-9][a-z0-9\\-]{0,62}", autocomplete: "off" });
  const me = h("input", { type: "text", name: "me", value: session.me, pattern: "[A-Za-z0-9_\\-]{1,64}", autocomplete: "off" });
  const message = h("div", { id: "signin-message", "aria-live": "assertive" }, denied ? notice("error", denied) : null);
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card narrow", novalidate: false },
    field("API token", token, { name: "token", hint: "Every API call sends it as a bearer token; it is kept only in this browser tab." }),
    field("Workspace", workspace, { name: "workspace" }),
    field("Your person id (optional)", me, { name: "me", hint: "Used for \"losing touch\" and introductions; you can set it later from a person's page." }),
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    message.replaceChildren();
    const ws = workspace.value.trim();
    try {
      // A cheap read proves the token and the workspace before anything is kept.
      await api.get(ROUTES.people, {}, { limit: 1 }, { token: token.value.trim(), workspace: ws, quiet: true });
      session.signIn(token.value.trim(), ws, me.value.trim());
      names.forget();
      // Back to the page the API's refusal interrupted (with what was typed there), if any.
      ctx.navigate(returnTo(ws) || (me.value.trim() ? "#/losing-touch" : "#/people"));
    } catch (err) {
      const status = err instanceof ApiError ? err.status : 0;
      message.replaceChildren(notice("error", status ? deniedText(status, ws) : String(err.message)));
      token.focus();
    } finally {
      submit.disabled = false;
    }
  });
  add(main, 
    h("h1", { tabindex: "-1" }, "Sign in to tieline"),
    h("p", {}, "Use an API token of your workspace. Tokens have a role: read, write or admin; recording events needs write."),
    message,
    form,
  );
}
