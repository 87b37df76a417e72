// "Batches": every team's batch jobs (`GET /admin/batches`), newest first: state, progress,
// failed lines, and when they were made and ended. Refreshed every five seconds.

import { get } from "../api.js";
import { h, table, replace, errorBox, badge, when, num } from "../dom.js";

const ENDED = { completed: "closed", failed: "open", expired: "open", cancelled: "half_open" };

function ended(b) {
  return b.completed_at || b.failed_at || b.cancelled_at || b.expired_at;
}

export default {
  id: "batches",
  title: "Batches",
  async render(el) {
    const out = h("section", { class: "card", id: "batches" });
    async function draw() {
      try {
        const rows = (await get("/admin/batches?limit=200")).data;
        replace(
          out,
          table(
            [
              { label: "Batch", get: (b) => h("code", {}, b.id) },
              { label: "Team", get: (b) => b.team },
              { label: "State", get: (b) => badge(b.status, ENDED[b.status] || "half_open") },
              {
                label: "Done",
                class: "n",
                get: (b) => {
                  const c = b.request_counts || {};
                  return `${num((c.completed || 0) + (c.failed || 0))} / ${num(c.total || 0)}`;
                },
              },
              { label: "Failed", class: "n", get: (b) => num((b.request_counts || {}).failed || 0) },
              { label: "Endpoint", get: (b) => b.endpoint },
              { label: "Made", class: "nowrap", get: (b) => when(b.created_at * 1000) },
              { label: "Ended", class: "nowrap", get: (b) => when((ended(b) || 0) * 1000) },
            ],
            rows,
            { id: "batches-table" },
          ),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }
    el.append(out);
    await draw();
    const timer = setInterval(draw, 5000);
    return () => clearInterval(timer);
  },
};
