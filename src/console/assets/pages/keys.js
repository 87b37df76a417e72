// "Teams & keys": the teams, the keys (made, changed, rotated and revoked through the admin
// API), and a new key shown once, right after it is made.

import { api, get } from "../api.js";
import { h, table, replace, errorBox, field, values, list, badge, when } from "../dom.js";
import { limitFields, limitsBody, limitsText } from "./limits.js";
import { teamsSection } from "./teams.js";

function state(k) {
  const now = Date.now();
  if (k.revoked_at) return "revoked";
  if (k.expires_at && k.expires_at <= now) return "expired";
  if (k.rotated_to) return "rotating";
  return "active";
}

/// The key itself, once: it is in no list and the server keeps only its hash.
function shownOnce(box, title, key) {
  replace(
    box,
    h(
      "div",
      { class: "once", id: "new-key" },
      h("strong", {}, title),
      h("p", {}, "Copy it now: it is not stored and will not be shown again."),
      h("code", { id: "new-key-value" }, key),
      h("button", { type: "button", class: "small", onclick: () => navigator.clipboard.writeText(key) }, "Copy"),
      h("button", { type: "button", class: "small", onclick: () => replace(box) }, "Done"),
    ),
  );
}

export default {
  id: "keys",
  title: "Teams & keys",
  async render(el) {
    const once = h("div", {});
    const msg = h("p", { class: "error", role: "alert" });
    const listEl = h("div", {});
    const editor = h("div", { id: "key-editor" });
    const teamSelect = h("select", { name: "team", required: true, id: "key-team" });

    async function load() {
      const keys = (await get("/admin/keys")).data;
      keys.sort((a, b) => b.created_at - a.created_at);
      replace(listEl, table(keyColumns, keys, { id: "keys-table" }));
    }

    function act(label, cls, f) {
      return h("button", { type: "button", class: `small ${cls}`, onclick: (ev) => f(ev.target) }, label);
    }

    async function revoke(k, button) {
      if (button.dataset.confirm !== "1") {
        button.dataset.confirm = "1";
        button.textContent = "Confirm revoke";
        setTimeout(() => {
          button.dataset.confirm = "";
          button.textContent = "Revoke";
        }, 5000);
        return;
      }
      try {
        await api("POST", `/admin/keys/${k.id}/revoke`);
        await load();
      } catch (e) {
        replace(msg, e.message);
      }
    }

    async function rotate(k) {
      try {
        const r = await api("POST", `/admin/keys/${k.id}/rotate`, { grace: "1h" });
        shownOnce(once, `New key for ${k.name} (the old one works for one more hour)`, r.key);
        await load();
      } catch (e) {
        replace(msg, e.message);
      }
    }

    function edit(k) {
      const form = h(
        "form",
        { class: "inline-form", id: "key-edit-form" },
        h("h3", {}, `Key ${k.name} (${k.id})`),
        field("Models (comma-separated; empty: the team's)", { name: "models", value: (k.models || []).join(", ") }),
        limitFields(k),
        h("button", { type: "submit", class: "primary" }, "Save"),
        h("button", { type: "button", onclick: () => replace(editor) }, "Cancel"),
      );
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const v = values(form);
        const models = list(v.models);
        try {
          await api("PATCH", `/admin/keys/${k.id}`, { models: models.length ? models : null, ...limitsBody(v, true) });
          replace(editor);
          await load();
        } catch (e) {
          replace(msg, e.message);
        }
      });
      replace(editor, form);
    }

    const keyColumns = [
      { label: "Name", get: (k) => k.name },
      { label: "Id", get: (k) => h("code", {}, k.id) },
      { label: "Team", get: (k) => k.team },
      { label: "Key", get: (k) => h("code", {}, `${k.prefix}…`) },
      { label: "State", get: (k) => badge(state(k)) },
      { label: "Limits", get: (k) => limitsText(k) },
      { label: "Expires", get: (k) => when(k.expires_at) },
      { label: "Last used", get: (k) => when(k.last_used_at) },
      {
        label: "",
        class: "actions",
        get: (k) =>
          state(k) === "active" || state(k) === "rotating"
            ? [
                act("Limits", "", () => edit(k)),
                k.rotated_to ? "" : act("Rotate", "", () => rotate(k)),
                act("Revoke", "danger", (b) => revoke(k, b)),
              ]
            : "",
      },
    ];

    const create = h(
      "form",
      { class: "inline-form", id: "key-create-form" },
      h("h3", {}, "New key"),
      h(
        "div",
        { class: "row" },
        h("label", { class: "field" }, h("span", {}, "Team"), teamSelect),
        field("Name", { name: "name", id: "key-name", required: true }),
        field("Models (comma-separated; empty: the team's)", { name: "models" }),
        field("Expires in days (empty: never)", { name: "expires_days", type: "number", min: 1 }),
      ),
      limitFields(null),
      h("button", { type: "submit", class: "primary", id: "key-create" }, "Create key"),
    );
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = values(create);
      const body = { team: v.team, name: v.name, ...limitsBody(v, false) };
      if (list(v.models).length) body.models = list(v.models);
      if (v.expires_days) body.expires_in_secs = Math.round(Number(v.expires_days) * 86400);
      try {
        const r = await api("POST", "/admin/keys", body);
        create.reset();
        replace(msg);
        shownOnce(once, `New key ${r.name} (${r.id}) for team ${r.team}`, r.key);
        await load();
      } catch (e) {
        replace(msg, e.message);
      }
    });

    const teams = await teamsSection((ts) => {
      const cur = teamSelect.value;
      replace(teamSelect, ts.map((t) => h("option", { value: t.name, selected: t.name === cur }, t.name)));
    });
    try {
      await load();
    } catch (e) {
      listEl.append(errorBox(e));
    }
    el.append(
      once,
      h("section", { class: "card", id: "keys" }, h("h2", {}, "Keys"), create, msg, editor, listEl),
      teams,
    );
  },
};
