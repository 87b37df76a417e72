// The limit fields teams and keys share (requests and tokens per minute, requests in flight, a
// budget), as form inputs and as the admin API's JSON.

import { h, field, select } from "../dom.js";

const PERIODS = [
  ["monthly", "per month"],
  ["daily", "per day"],
  ["none", "in total"],
];

/// Inputs for the limits of `cur` (a team or key record, or nothing for a new one).
export function limitFields(cur) {
  const c = cur || {};
  return h(
    "div",
    { class: "row" },
    field("Requests / min", { name: "requests_per_minute", type: "number", min: 1, value: c.requests_per_minute }),
    field("Tokens / min", { name: "tokens_per_minute", type: "number", min: 1, value: c.tokens_per_minute }),
    field("In flight", { name: "max_concurrent", type: "number", min: 1, value: c.max_concurrent }),
    field("Budget USD", {
      name: "budget_usd",
      type: "number",
      min: 0,
      step: "any",
      value: c.budget ? c.budget.amount_usd : undefined,
    }),
    select("Budget period", "budget_period", PERIODS, c.budget ? c.budget.period : "monthly"),
  );
}

/// The limits in `v` (form values) as JSON. `patch`: an empty field clears the limit (`null`);
/// otherwise an empty field is left out.
export function limitsBody(v, patch) {
  const out = {};
  for (const k of ["requests_per_minute", "tokens_per_minute", "max_concurrent"]) {
    if (v[k] !== "") out[k] = Number(v[k]);
    else if (patch) out[k] = null;
  }
  if (v.budget_usd !== "") out.budget = { amount_usd: Number(v.budget_usd), period: v.budget_period };
  else if (patch) out.budget = null;
  return out;
}

/// One line saying what is limited.
export function limitsText(r) {
  const parts = [];
  if (r.requests_per_minute) parts.push(`${r.requests_per_minute} rpm`);
  if (r.tokens_per_minute) parts.push(`${r.tokens_per_minute} tpm`);
  if (r.max_concurrent) parts.push(`${r.max_concurrent} in flight`);
  if (r.budget) {
    const per = { monthly: "/month", daily: "/day", none: " total" }[r.budget.period] || "";
    parts.push(`$${r.budget.amount_usd}${per}`);
  }
  return parts.length ? parts.join(", ") : "unlimited";
}
