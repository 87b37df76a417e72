// "Response cache": hits, misses, entries and bytes per tier (`GET /admin/cache`), the models
// that cache and in which tiers, and a purge (`DELETE /admin/cache`, all or by model or team).

import { api, get } from "../api.js";
import { h, table, replace, errorBox, field, values, num } from "../dom.js";

export default {
  id: "cache",
  title: "Response cache",
  async render(el) {
    const out = h("div", {});
    const msg = h("p", { role: "status", id: "cache-message" });

    async function draw() {
      try {
        const s = await get("/admin/cache");
        const tiers = Object.entries(s.tiers || {}).map(([name, t]) => ({ name, ...t }));
        const models = Object.entries(s.models || {}).map(([name, m]) => ({ name, ...m }));
        replace(
          out,
          h("section", { class: "card" }, h("h2", {}, "Tiers"),
            table(
              [
                { label: "Tier", get: (t) => t.name },
                { label: "Hits", class: "n", get: (t) => num(t.hits) },
                { label: "Misses", class: "n", get: (t) => num(t.misses) },
                { label: "Hit ratio", class: "n", get: (t) => `${(100 * (t.hit_ratio || 0)).toFixed(1)} %` },
                { label: "Entries", class: "n", get: (t) => num(t.entries) },
                { label: "Bytes", class: "n", get: (t) => num(t.bytes) },
              ],
              tiers,
              { id: "cache-tiers" },
            ),
          ),
          h("section", { class: "card" }, h("h2", {}, "Models that cache"),
            table([{ label: "Model", get: (m) => m.name }, { label: "Tiers", get: (m) => (m.tiers || []).join(", ") }], models),
          ),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }

    const purge = h(
      "form",
      { class: "inline-form card", id: "cache-purge" },
      h("h2", {}, "Purge"),
      h("p", { class: "muted" }, "Empty fields purge everything. Memory is purged on this replica; disk and Redis for every replica sharing them."),
      h("div", { class: "row" }, field("Model", { name: "model" }), field("Team", { name: "team" })),
      h("button", { type: "submit", class: "danger" }, "Purge"),
    );
    purge.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = values(purge);
      const q = new URLSearchParams();
      if (v.model) q.set("model", v.model);
      if (v.team) q.set("team", v.team);
      try {
        const r = await api("DELETE", `/admin/cache${q.size ? `?${q}` : ""}`);
        replace(msg, r.complete ? "Purged." : "Purged here; a shared tier could not be reached.");
        await draw();
      } catch (e) {
        replace(msg, errorBox(e));
      }
    });

    el.append(out, purge, msg);
    await draw();
  },
};
