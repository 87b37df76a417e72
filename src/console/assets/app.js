// The console's shell: sign in and out, the page list, and the router (`#/<page>`). Each page
// is a module with `{ id, title, render(el) }`; `render` may return a function that stops
// what it started (a refresh timer) when another page is shown.

import { api, get, setCsrf, whenSignedOut } from "./api.js";
import { h, replace, errorBox } from "./dom.js";
import keys from "./pages/keys.js";
import spend from "./pages/spend.js";
import upstreams from "./pages/upstreams.js";
import credentials from "./pages/credentials.js";
import errors from "./pages/errors.js";
import cache from "./pages/cache.js";
import batches from "./pages/batches.js";

const PAGES = [keys, spend, upstreams, credentials, errors, cache, batches];

const $ = (id) => document.getElementById(id);
let stop = null;
// Which route() call is current: a page that finishes drawing after another was chosen stops
// at once instead of keeping its timers.
let shown = 0;

function showLogin(message) {
  shown++;
  if (stop) stop();
  stop = null;
  setCsrf(null);
  $("shell").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-key").focus();
  document.body.dataset.state = "signed-out";
}

function showShell(session) {
  setCsrf(session.csrf);
  $("login").hidden = true;
  $("shell").hidden = false;
  document.body.dataset.state = "signed-in";
  route();
}

async function route() {
  if ($("shell").hidden) return;
  const id = location.hash.replace(/^#\/?/, "") || PAGES[0].id;
  const page = PAGES.find((p) => p.id === id) || PAGES[0];
  const mine = ++shown;
  if (stop) stop();
  stop = null;
  for (const a of $("nav").querySelectorAll("a")) a.classList.toggle("active", a.dataset.page === page.id);
  const body = h("div", { class: "page-body", id: `page-${page.id}` });
  replace($("page"), h("h1", {}, page.title), body);
  document.title = `${page.title} · Tollgate`;
  try {
    const cleanup = (await page.render(body)) || null;
    if (mine !== shown) {
      if (cleanup) cleanup();
      return;
    }
    stop = cleanup;
    body.dataset.ready = "1";
  } catch (e) {
    body.append(errorBox(e));
  }
}

async function login(ev) {
  ev.preventDefault();
  const input = $("login-key");
  $("login-submit").disabled = true;
  try {
    const session = await api("POST", "/console/login", { key: input.value });
    input.value = "";
    showShell(session);
  } catch (e) {
    input.value = "";
    showLogin(e.status === 401 ? "That is not the admin key." : e.message);
  } finally {
    $("login-submit").disabled = false;
  }
}

async function logout() {
  try {
    await api("POST", "/console/logout");
  } finally {
    showLogin("Signed out.");
  }
}

function start() {
  $("nav").append(
    ...PAGES.map((p) => h("a", { href: `#/${p.id}`, "data-page": p.id, id: `nav-${p.id}` }, p.title)),
  );
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  whenSignedOut(() => showLogin("Your session has ended: sign in again."));
  get("/console/session").then(showShell, () => showLogin(""));
}

start();
