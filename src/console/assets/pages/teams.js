// The teams section of "Teams & keys": config teams (read-only here) and store teams, which can
// be created and have their models and limits changed.

import { api, get } from "../api.js";
import { h, table, replace, errorBox, field, values, list, badge } from "../dom.js";
import { limitFields, limitsBody, limitsText } from "./limits.js";

export async function teamsSection(onChange) {
  const box = h("section", { class: "card", id: "teams" });
  const editor = h("div", { id: "team-editor" });
  const listEl = h("div", {});
  const msg = h("p", { class: "error", role: "alert" });

  async function load() {
    const teams = (await get("/admin/teams")).data;
    replace(
      listEl,
      table(
        [
          { label: "Team", get: (t) => t.name },
          { label: "Source", get: (t) => badge(t.source, t.source) },
          { label: "Models", get: (t) => (t.models || []).join(", ") || "–" },
          { label: "Limits", get: (t) => (t.source === "store" ? limitsText(t) : "in the config file") },
          {
            label: "",
            class: "actions",
            get: (t) =>
              t.source === "store"
                ? h("button", { type: "button", class: "small", onclick: () => edit(t) }, "Edit")
                : "",
          },
        ],
        teams,
        { id: "teams-table" },
      ),
    );
    onChange(teams);
  }

  function edit(t) {
    const form = h(
      "form",
      { class: "inline-form", id: "team-edit-form" },
      h("h3", {}, `Team ${t.name}`),
      field("Models (comma-separated, * for all)", { name: "models", value: (t.models || []).join(", ") }),
      limitFields(t),
      h("button", { type: "submit", class: "primary" }, "Save"),
      h("button", { type: "button", onclick: () => replace(editor) }, "Cancel"),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = values(form);
      try {
        await api("PATCH", `/admin/teams/${encodeURIComponent(t.name)}`, {
          models: list(v.models),
          ...limitsBody(v, true),
        });
        replace(editor);
        await load();
      } catch (e) {
        replace(msg, e.message);
      }
    });
    replace(editor, form);
  }

  const create = h(
    "form",
    { class: "inline-form", id: "team-create-form" },
    h("h3", {}, "New team"),
    h(
      "div",
      { class: "row" },
      field("Name", { name: "name", required: true, pattern: "[A-Za-z0-9_.-]+" }),
      field("Models (comma-separated, * for all)", { name: "models", value: "*" }),
    ),
    limitFields(null),
    h("button", { type: "submit", class: "primary" }, "Create team"),
  );
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(create);
    try {
      await api("POST", "/admin/teams", { name: v.name, models: list(v.models), ...limitsBody(v, false) });
      create.reset();
      replace(msg);
      await load();
    } catch (e) {
      replace(msg, e.message);
    }
  });

  try {
    await load();
  } catch (e) {
    listEl.append(errorBox(e));
  }
  box.append(h("h2", {}, "Teams"), listEl, editor, msg, h("details", {}, h("summary", {}, "New team"), create));
  return box;
}
