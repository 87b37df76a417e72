// "Recent errors": the latest failed requests (status 400 or above) from the usage rows, via
// `GET /admin/usage/errors`. Requests refused before a key was recognised have no usage row
// and are not listed (they are counted in the metrics: `tollgate_errors_total`).

import { get } from "../api.js";
import { h, table, replace, errorBox, badge, when } from "../dom.js";

export default {
  id: "errors",
  title: "Recent errors",
  async render(el) {
    const out = h("div", {});
    async function draw() {
      try {
        const rows = (await get("/admin/usage/errors?limit=100")).data;
        replace(
          out,
          h("section", { class: "card" },
            table(
              [
                { label: "Time", class: "nowrap", get: (r) => when(r.ts) },
                { label: "Status", get: (r) => badge(String(r.status), r.status >= 500 ? "open" : "half_open") },
                { label: "Kind", get: (r) => r.error_kind || "–" },
                { label: "Team", get: (r) => r.team },
                { label: "Key", get: (r) => h("code", {}, r.key_id) },
                { label: "Model", get: (r) => r.model || "–" },
                { label: "Upstream", get: (r) => r.upstream || "–" },
                { label: "Endpoint", get: (r) => r.endpoint },
                { label: "Latency", class: "n", get: (r) => `${r.latency_ms} ms` },
                { label: "Request id", get: (r) => h("code", {}, r.request_id) },
              ],
              rows,
              { id: "errors-table" },
            ),
          ),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }
    el.append(out);
    await draw();
    const timer = setInterval(draw, 10000);
    return () => clearInterval(timer);
  },
};
