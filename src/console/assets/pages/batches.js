// "Batches": the place for batch jobs. They are not served by this build yet; when they are,
// this page lists them from the admin API (their state, counts, and a cancel button), like the
// other pages: fetch with `get`, draw with `table`, write with `api`.

import { h } from "../dom.js";

export default {
  id: "batches",
  title: "Batches",
  async render(el) {
    el.append(
      h("section", { class: "card", id: "batches-placeholder" },
        h("p", {}, "Batch jobs are not part of this build yet."),
        h("p", { class: "muted" }, "When they are, this page lists each batch with its state and progress."),
      ),
    );
  },
};
