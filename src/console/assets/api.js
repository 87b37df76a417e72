// The admin API client. The session cookie (HttpOnly: this script never sees it) goes along by
// itself on same-origin requests; every write carries the session's CSRF token, which the
// server checks against the session. A 401 means the session is over: back to the sign-in form.

let csrf = null;
let signedOut = () => {};

export function setCsrf(token) {
  csrf = token;
}

export function whenSignedOut(f) {
  signedOut = f;
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["x-csrf-token"] = csrf;
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    if (resp.status === 401 && path !== "/console/login") signedOut();
    throw new ApiError(resp.status, e.message || `${resp.status} ${resp.statusText}`, e.code);
  }
  return data;
}

export const get = (path) => api("GET", path);
