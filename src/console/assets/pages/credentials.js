// "Credentials": every upstream credential and pool member from `GET /admin/credentials`
// (state, expiry, last error, requests served; never a secret: a fingerprint at most), and
// re-enabling a disabled or cooling pool member (`POST …/members/{index}/enable`).

import { api, get } from "../api.js";
import { h, table, replace, errorBox, badge, num, secs, when } from "../dom.js";

export default {
  id: "credentials",
  title: "Credentials",
  async render(el) {
    const out = h("div", {});
    const msg = h("p", { class: "error", role: "alert" });

    async function enable(name, index) {
      try {
        await api("POST", `/admin/credentials/${encodeURIComponent(name)}/members/${index}/enable`);
        replace(msg);
        await draw();
      } catch (e) {
        replace(msg, e.message);
      }
    }

    const cols = (parent) => [
      { label: parent ? "Member" : "Credential", get: (c) => (parent ? `#${c.index}` : c.name) },
      { label: "Kind", get: (c) => c.kind },
      { label: "State", get: (c) => badge(c.state) },
      { label: "Fingerprint", get: (c) => (c.fingerprint ? h("code", {}, c.fingerprint) : "–") },
      { label: "Expires in", get: (c) => secs(c.expires_in_secs) },
      { label: "Cooling until", get: (c) => (c.cooling_down_until ? when(c.cooling_down_until * 1000) : "–") },
      { label: "Served", class: "n", get: (c) => num(c.requests_served) },
      { label: "Renewals (failed)", class: "n", get: (c) => (c.renewals === undefined ? "–" : `${num(c.renewals)} (${num(c.renewal_failures)})`) },
      { label: "Last error", get: (c) => c.last_error || "–" },
      {
        label: "",
        class: "actions",
        get: (c) =>
          parent && c.state !== "valid"
            ? h("button", { type: "button", class: "small", onclick: () => enable(parent, c.index) }, "Enable")
            : "",
      },
    ];

    async function draw() {
      try {
        const list = (await get("/admin/credentials")).credentials;
        replace(
          out,
          list.length ? "" : h("p", { class: "muted" }, "No upstream credentials are configured."),
          list.map((c) =>
            h("section", { class: "card", "data-credential": c.name },
              h("h2", {}, c.name, " ", badge(c.state)),
              table(cols(null), [c]),
              c.members && c.members.length ? [h("h3", {}, "Pool members"), table(cols(c.name), c.members)] : "",
            ),
          ),
        );
      } catch (e) {
        replace(out, errorBox(e));
      }
    }
    el.append(msg, out);
    await draw();
    const timer = setInterval(draw, 5000);
    return () => clearInterval(timer);
  },
};
