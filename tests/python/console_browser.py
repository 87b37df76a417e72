"""The Tollgate web console in a real browser: headless Chromium driven by selenium.

Usage:
  console_browser.py BASE_URL ADMIN_KEY [--credential POOL]  the browser test (tests/console_browser.rs)
  console_browser.py BASE_URL ADMIN_KEY --screenshots DIR [--seed DB] [--credential POOL]
                                                             one PNG per page (scripts/screenshots.sh)

BASE_URL is a running gateway (http://127.0.0.1:PORT) with the console on, the mock model
`mock-gpt`, the team `demo` and the demo key. The browser is the system's Chromium and its
chromedriver (Debian's `chromium` and `chromium-driver`; TOLLGATE_CHROMIUM and
TOLLGATE_CHROMEDRIVER override the paths); selenium never downloads a driver. `--seed DB` adds a
day of usage rows to the gateway's SQLite file first, so the screenshots' charts have a history;
`--credential POOL` names a pool credential the credentials page must show with its members.

Checks (each raises on failure; the script exits 1 and prints which): a wrong key is refused
and sets no cookie; the right key signs in with an HttpOnly, SameSite=Strict cookie that page
scripts cannot read; a key made on the keys page is shown once, then works against
/v1/chat/completions through a real socket; the spend page draws its charts from those
requests; a revoked key then gets 401; a write without the CSRF token is refused from the
page's own origin; every page renders; signing out ends the session.
"""

import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid

os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never download anything

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("TOLLGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
DEMO_KEY = "sk-tollgate-demo"
WAIT = 20


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1360,900",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def http(base, path, key=None, body=None, cookie=None, method=None):
    """A request through a real socket: (status, parsed JSON or text)."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if cookie:
        headers["cookie"] = cookie
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def chat(base, key, model="mock-gpt", text="hello from the console test"):
    return http(base, "/v1/chat/completions", key, {"model": model, "messages": [{"role": "user", "content": text}]})


class Console:
    def __init__(self, d, base, shots):
        self.d, self.base, self.shots = d, base, shots

    def wait(self, cond, what, timeout=WAIT):
        try:
            # Pages redraw their tables: an element read while it is replaced is simply read again.
            wait = WebDriverWait(self.d, timeout, ignored_exceptions=(StaleElementReferenceException,))
            return wait.until(lambda d: cond(d))
        except Exception as e:
            raise AssertionError(f"timed out waiting for {what}") from e

    def css(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def one(self, sel, what=None):
        return self.wait(lambda d: (self.css(sel) or [None])[0], what or sel)

    def page(self, name):
        """Show `#/name` and wait until it has drawn."""
        self.d.get(f"{self.base}/console#/{name}")
        self.d.refresh()
        self.one(f"#page-{name}[data-ready='1']", f"the {name} page")

    def shot(self, name):
        if self.shots:
            time.sleep(0.3)  # let the last paint land; screenshots only, never a check
            self.d.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def fetch(self, method, path, headers=None, body=None):
        """fetch() from the console's own origin, with its cookie: the status."""
        return self.d.execute_async_script(
            """
            const [method, path, headers, body, done] = arguments;
            fetch(path, {method, headers: Object.assign({"content-type": "application/json"}, headers || {}),
                         body: body === null ? undefined : JSON.stringify(body), credentials: "same-origin"})
              .then(r => done(r.status), e => done(String(e)));
            """,
            method,
            path,
            headers,
            body,
        )


def sign_in(c, key):
    c.d.get(f"{c.base}/console")
    c.one("body[data-state='signed-out']", "the sign-in form")
    c.shot("login")
    box = c.one("#login-key")
    box.clear()
    box.send_keys(key)
    c.one("#login-submit").click()


def check_login(c, admin_key):
    sign_in(c, "sk-not-the-admin-key")
    c.wait(lambda d: "not the admin key" in c.one("#login-error").text, "the refusal message")
    assert c.d.get_cookie("tollgate_console") is None, "a refused login set a cookie"
    assert c.css("body[data-state='signed-out']"), "a wrong key signed in"
    sign_in(c, admin_key)
    c.one("body[data-state='signed-in']", "the signed-in shell")
    c.one("#page-keys[data-ready='1']", "the keys page")
    cookie = c.d.get_cookie("tollgate_console")
    assert cookie, "no session cookie"
    assert cookie.get("httpOnly") is True, cookie
    assert cookie.get("sameSite") == "Strict", cookie
    assert cookie.get("path") == "/", cookie
    assert admin_key not in cookie["value"], "the cookie holds the admin key"
    seen = c.d.execute_script("return document.cookie")
    assert "tollgate_console" not in seen, f"page scripts can read the session cookie: {seen!r}"


def create_key(c, team, name):
    c.page("keys")
    Select(c.one("#key-team")).select_by_value(team)
    c.one("#key-name").send_keys(name)
    c.one("#key-create").click()
    key = c.one("#new-key-value", "the new key").text.strip()
    assert key.startswith("sk-tg-"), f"not a key: {key!r}"
    c.wait(lambda d: any(name in r.text for r in c.css("#keys-table tbody tr")), "the key in the list")
    return key


def check_key_shown_once(c, key):
    c.page("spend")
    c.page("keys")
    assert not c.css("#new-key"), "the new key is still shown after leaving the page"
    assert key not in c.d.page_source, "the key is in the page after it was shown"


def series_total(c, chart):
    paths = c.css(f"figure[data-chart='{chart}'] path.series")
    return sum(float(p.get_attribute("data-total") or 0) for p in paths)


def check_spend_chart(c, rows):
    deadline = time.monotonic() + WAIT
    while True:
        c.page("spend")
        if series_total(c, "requests") == rows:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the requests chart never showed {rows}: {series_total(c, 'requests')}")
        time.sleep(0.2)  # the usage writer flushes in the background: poll, bounded
    assert series_total(c, "spend") > 0, "the spend chart shows no spend"
    assert c.css("figure[data-chart='requests'] svg circle.point"), "no data points drawn"
    assert c.css("#spend-totals tbody tr"), "no totals table"
    # One model only: the request for an unknown model drops out of the chart.
    total = series_total(c, "requests")
    Select(c.one("select[name='model']")).select_by_value("mock-gpt")
    c.wait(lambda d: series_total(c, "requests") == total - 1, f"{total - 1} requests of mock-gpt alone")
    Select(c.one("select[name='model']")).select_by_value("")
    c.wait(lambda d: series_total(c, "requests") == total, "all requests again")


def revoke(c, name):
    c.page("keys")
    row = next(r for r in c.css("#keys-table tbody tr") if name in r.text)
    button = next(b for b in row.find_elements(By.TAG_NAME, "button") if b.text == "Revoke")
    button.click()
    c.wait(lambda d: button.text == "Confirm revoke", "the confirm step")
    button.click()
    c.wait(
        lambda d: any(name in r.text and "revoked" in r.text for r in c.css("#keys-table tbody tr")),
        "the key shown as revoked",
    )


def check_csrf(c):
    team = {"name": "csrf-probe", "models": ["*"]}
    assert c.fetch("POST", "/admin/teams", None, team) == 403, "a write without the CSRF token passed"
    bad = {"x-csrf-token": "0" * 64}
    assert c.fetch("POST", "/admin/teams", bad, team) == 403, "a wrong CSRF token passed"
    assert c.fetch("GET", "/admin/teams", None, None) == 200, "a read with the cookie failed"


def make_batch(base, key):
    """A one-line batch made with the official SDK and the given key; its id."""
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key=key)
    line = json.dumps({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}})
    f = client.files.create(file=("console.jsonl", (line + "\n").encode()), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id


def check_pages(c, credential, batch_id=None):
    c.page("upstreams")
    c.wait(lambda d: "closed" in c.one("#upstreams-table").text, "the mock upstream's breaker")
    c.shot("upstreams")
    c.page("credentials")
    if credential:
        section = c.one(f"section[data-credential='{credential}']", f"the credential {credential}")
        c.wait(lambda d: "Pool members" in section.text and "valid" in section.text, "its members and state")
    c.shot("credentials")
    c.page("errors")
    c.wait(lambda d: "404" in c.one("#errors-table").text, "the failed request")
    c.shot("errors")
    c.page("cache")
    c.one("#cache-tiers")
    c.shot("cache")
    c.page("batches")
    if batch_id:
        c.wait(lambda d: batch_id in c.one("#batches").text, f"the batch {batch_id}")
        c.wait(lambda d: "completed" in c.one("#batches").text, "its state, once it is done")
    else:
        c.one("#batches")
    c.shot("batches")


def check_logout(c):
    cookie = c.d.get_cookie("tollgate_console")["value"]
    c.one("#logout").click()
    c.one("body[data-state='signed-out']", "the sign-in form after signing out")
    status, _ = http(c.base, "/admin/keys", cookie=f"tollgate_console={cookie}")
    assert status == 401, f"the old session still works after signing out: {status}"


def seed(db, teams, model):
    """A day of usage rows (hourly, a few per hour per team), for the screenshots' charts."""
    rng = random.Random(7)
    now = int(time.time() * 1000)
    rows = []
    for hours_back in range(23, 0, -1):
        for team in teams:
            for _ in range(rng.randint(2, 9) * (2 if team == teams[0] else 1)):
                ts = now - hours_back * 3_600_000 + rng.randint(0, 3_599_000)
                status = 200 if rng.random() > 0.06 else rng.choice([429, 502])
                p, comp = rng.randint(200, 2000), rng.randint(50, 800)
                rows.append((uuid.uuid4().hex, ts, str(uuid.uuid4()), team, "demo", model, "mock", "chat", 0,
                             status, None if status == 200 else ("policy_rate_limited" if status == 429 else "upstream_server_error"),
                             p, comp, (p * 0.15 + comp * 0.6) / 1e6 * 40, rng.randint(80, 900), rng.randint(30, 300), 0))
    con = sqlite3.connect(db, timeout=10)
    con.executemany("INSERT INTO usage (id, ts, request_id, team, key_id, model, upstream, endpoint, stream, status, "
                    "error_kind, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttfb_ms, cache_hit) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return len(rows)


def run(base, admin_key, shots, seed_db, credential):
    profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
    d = browser(profile)
    c = Console(d, base, shots)
    try:
        steps = [("sign in: wrong key refused, right key in, HttpOnly SameSite=Strict cookie", lambda: check_login(c, admin_key))]
        if shots:
            def team():
                assert http(base, "/admin/teams", admin_key, {"name": "research", "models": ["*"], "requests_per_minute": 600,
                                                              "budget": {"amount_usd": 50, "period": "monthly"}})[0] == 201
                if seed_db:
                    state["seeded"] = seed(seed_db, ["demo", "research"], "mock-gpt")
            steps.append(("a second team and a day of history for the charts", team))
        state = {"seeded": 0}

        def make_key():
            state["key"] = create_key(c, "demo", "browser-key")
            c.shot("keys")

        def use_key():
            for i in range(3):
                status, body = chat(base, state["key"])
                assert status == 200, f"request {i} with the new key: {status} {body}"
            status, body = chat(base, state["key"], model="no-such-model")
            assert status == 404, f"unknown model: {status} {body}"

        def spend():
            check_spend_chart(c, 4 + state["seeded"])
            if shots:
                Select(c.one("select[name='group_by']")).select_by_value("team")
                c.wait(lambda d: len(c.css("figure[data-chart='spend'] path.series")) >= 2 or not seed_db, "per-team lines")
                c.shot("spend")

        def revoked():
            revoke(c, "browser-key")
            status, body = chat(base, state["key"])
            assert status == 401, f"the revoked key got {status}: {body}"

        steps += [
            ("a key made on the keys page is shown once", make_key),
            ("the new key works against /v1/chat/completions", use_key),
            ("the key is not shown again", lambda: check_key_shown_once(c, state["key"])),
            ("the spend page charts the requests", spend),
            # After the chart: the batch's line is a request of the team too.
            ("a batch made with the new key", lambda: state.update(batch=make_batch(base, state["key"]))),
            ("a revoked key gets 401", revoked),
            ("a write without the CSRF token is refused", lambda: check_csrf(c)),
            ("every page renders, the batch made with the key on the batches page",
             lambda: check_pages(c, credential, state.get("batch"))),
            ("signing out ends the session", lambda: check_logout(c)),
        ]
        failed = 0
        for name, step in steps:
            try:
                step()
                print(f"ok   {name}", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
                for alert in c.css("[role=alert]"):
                    if alert.text:
                        print(f"  on the page: {alert.text}", flush=True)
                for entry in d.get_log("browser"):
                    if entry.get("level") != "DEBUG":
                        print(f"  browser: {entry.get('message')}", flush=True)
                break
        return failed
    finally:
        d.quit()


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    base, key = argv[1].rstrip("/"), argv[2]
    shots = seed_db = None
    if "--screenshots" in argv:
        shots = argv[argv.index("--screenshots") + 1]
        os.makedirs(shots, exist_ok=True)
    if "--seed" in argv:
        seed_db = argv[argv.index("--seed") + 1]
    credential = argv[argv.index("--credential") + 1] if "--credential" in argv else None
    failed = run(base, key, shots, seed_db, credential)
    print("console browser test: " + ("FAILED" if failed else "all passed"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
