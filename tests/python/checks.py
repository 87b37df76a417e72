"""The runner the SDK check scripts share: each check is a function of the base URL; every one
runs, a failure prints its traceback, the last line says how many passed, and the exit status is
1 when any failed (the Rust tests read both)."""

import sys
import traceback


def run(checks, note=""):
    base_url = sys.argv[1]
    failed = 0
    for check in checks:
        try:
            check(base_url)
            print(f"ok   {check.__name__}")
        except Exception:  # noqa: BLE001 - report every failure, then exit 1
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"{len(checks) - failed}/{len(checks)} checks passed{note}")
    sys.exit(1 if failed else 0)
