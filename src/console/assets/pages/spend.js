// "Spend": spend and requests over time per model or team (optionally of one team or one model),
// as charts drawn from `GET /admin/usage/series` (usage rows summed per hour or day), and the
// totals per line.

import { get } from "../api.js";
import { h, table, replace, errorBox, select, money, num } from "../dom.js";
import { lineChart } from "../chart.js";

export default {
  id: "spend",
  title: "Spend & requests",
  async render(el) {
    const [teams, status] = await Promise.all([get("/admin/teams"), get("/admin/status")]);
    const all = (what, names) => [["", `all ${what}`], ...names.map((n) => [n, n])];
    const controls = h(
      "form",
      { class: "controls", id: "spend-controls" },
      select("Per", "group_by", [["model", "model"], ["team", "team"]], "model"),
      select("Buckets", "bucket", [["hour", "hours (last 24)"], ["day", "days (last 30)"]], "hour"),
      select("Team", "team", all("teams", teams.data.map((t) => t.name)), ""),
      select("Model", "model", all("models", status.models), ""),
    );
    const out = h("div", { id: "spend-charts" });

    async function draw() {
      const f = controls.elements;
      const by = f.group_by.value;
      const q = new URLSearchParams({ group_by: by, bucket: f.bucket.value });
      if (f.team.value) q.set("team", f.team.value);
      if (f.model.value) q.set("model", f.model.value);
      try {
        const r = await get(`/admin/usage/series?${q}`);
        const common = { series: r.series, from: r.from, to: r.to, step: r.bucket_ms };
        const sum = (f) => (sr) => sr.points.reduce((a, p) => a + f(p), 0);
        replace(
          out,
          lineChart({ ...common, id: "spend", title: "Spend (USD)", value: (p) => p.cost_usd, format: money }),
          lineChart({ ...common, id: "requests", title: "Requests", value: (p) => p.requests, format: num }),
          h("section", { class: "card" }, h("h2", {}, `Totals per ${by}`),
            table(
              [
                { label: by === "team" ? "Team" : "Model", get: (s) => s.key },
                { label: "Requests", class: "n", get: (s) => num(sum((p) => p.requests)(s)) },
                { label: "Errors", class: "n", get: (s) => num(sum((p) => p.errors)(s)) },
                { label: "Prompt tokens", class: "n", get: (s) => num(sum((p) => p.prompt_tokens)(s)) },
                { label: "Completion tokens", class: "n", get: (s) => num(sum((p) => p.completion_tokens)(s)) },
                { label: "Spend", class: "n", get: (s) => money(sum((p) => p.cost_usd)(s)) },
              ],
              r.series,
              { id: "spend-totals" },
            ),
          ),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }

    controls.addEventListener("change", draw);
    el.append(controls, out);
    await draw();
    const timer = setInterval(draw, 15000);
    return () => clearInterval(timer);
  },
};
