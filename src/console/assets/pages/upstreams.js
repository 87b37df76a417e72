// "Upstreams": each upstream's health as this replica sees it, from `GET /admin/status`:
// breaker state, time to first byte (moving average), requests in flight and queued against
// their caps. Refreshed every 3 seconds while shown.

import { get } from "../api.js";
import { h, table, replace, errorBox, badge, num } from "../dom.js";

export default {
  id: "upstreams",
  title: "Upstream health",
  async render(el) {
    const out = h("div", {});
    async function draw() {
      try {
        const s = await get("/admin/status");
        replace(
          out,
          h("section", { class: "card" },
            table(
              [
                { label: "Upstream", get: (u) => u.name },
                { label: "Breaker", get: (u) => badge(u.breaker || "unknown", u.breaker) },
                { label: "Time to first byte", class: "n", get: (u) => (u.ewma_ttfb_ms ? `${u.ewma_ttfb_ms.toFixed(1)} ms` : "–") },
                { label: "In flight", class: "n", get: (u) => `${num(u.in_flight)} / ${num(u.max_concurrent)}` },
                { label: "Queued", class: "n", get: (u) => `${num(u.queued)} / ${num(u.max_queue)}` },
                { label: "Credential", get: (u) => u.credential || "–" },
              ],
              s.upstreams,
              { id: "upstreams-table" },
            ),
          ),
          h("p", { class: "muted" }, `Models: ${s.models.join(", ")}. Config teams: ${s.teams.join(", ")}. Config keys: ${s.config_keys}.`),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }
    el.append(out);
    await draw();
    const timer = setInterval(draw, 3000);
    return () => clearInterval(timer);
  },
};
