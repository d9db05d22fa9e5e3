"""The console's front-end libraries are the pinned files (api/console/static/vendor),
served by the API, and every page loads only scripts of our own origin."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

VENDOR = Path(__file__).resolve().parent.parent / "api" / "console" / "static" / "vendor"
BASE = VENDOR.parent.parent / "templates" / "base.html"

pytestmark = pytest.mark.devserver


def pinned() -> dict[str, str]:
    text = (VENDOR / "README.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_vendored_files_match_their_pinned_digests():
    digests = pinned()
    assert set(digests) == {p.name for p in VENDOR.glob("*.js")}
    for name, digest in digests.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    scripts = re.findall(r'<script src="([^"]+)"', BASE.read_text())
    assert {s.rsplit("/", 1)[1] for s in scripts if "/vendor/" in s} == set(digests)


async def test_pages_load_only_our_own_scripts(signed_in, console_site):
    page = await signed_in("admin")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    answer = await page.goto("/console/users")
    assert answer.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    # Both ran under the CSP:
    await page.wait_for_function("() => Boolean(window.htmx && window.Chart)")
    assert requested and all(url.startswith(console_site.url) for url in requested)
    assert not errors
    static = await page.request.get("/console/static/vendor/htmx-2.0.11.min.js")
    assert static.ok and hashlib.sha256(await static.body()).hexdigest() == pinned()[
        "htmx-2.0.11.min.js"]  # fmt: skip
