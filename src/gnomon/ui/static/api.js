// The JSON API client: GET /v1/..., with the bearer token asked for once when the server answers 401.

import { h } from "./dom.js";

const TOKEN_KEY = "gnomon.token";

/** An API answer that is not a success: `status` is the HTTP status (0: the server was not reached). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let pendingPrompt = null;

/** Ask for a token in a modal dialog (one dialog for every request waiting on it); resolves with it. */
function promptToken(refused) {
  if (pendingPrompt) return pendingPrompt;
  pendingPrompt = new Promise((resolve) => {
    const input = h("input", {
      type: "password", id: "token-input", name: "token", autocomplete: "off", required: true,
      placeholder: "the token printed by gnomon token create",
    });
    const dialog = h("dialog", { id: "token-dialog", class: "token-dialog" },
      h("form", { method: "dialog" },
        h("h2", {}, "Token required"),
        h("p", {}, refused
          ? "The server refused the token. Enter another one."
          : "This server asks for a bearer token (serving.auth in gnomon.yaml). Create one with ",
          refused ? null : h("code", {}, "gnomon token create NAME --scopes fetch"), refused ? null : "."),
        input,
        h("p", { class: "hint" }, "It is kept in this browser tab only (sessionStorage)."),
        h("div", { class: "actions" }, h("button", { type: "submit", id: "token-submit" }, "Use token"))));
    dialog.addEventListener("cancel", (event) => event.preventDefault());
    dialog.addEventListener("close", () => {
      const token = input.value.trim();
      dialog.remove();
      pendingPrompt = null;
      sessionStorage.setItem(TOKEN_KEY, token);
      resolve(token);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

/** GET `path` with `params` (empty values left out) and return the parsed JSON. */
export async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  for (let refused = false; ; refused = true) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    let response;
    try {
      response = await fetch(url, { headers });
    } catch (error) {
      throw new ApiError(0, `the server did not answer ${url.pathname} (${error.message})`);
    }
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await promptToken(refused || Boolean(token));
      continue;
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : text || response.statusText;
      throw new ApiError(response.status, `${response.status} from ${url.pathname}: ${reason}`);
    }
    return body;
  }
}
