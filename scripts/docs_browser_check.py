"""The built docs site, read as a reader would: served, opened in a headless Chromium, checked page by page.

    mkdocs build --strict
    python scripts/docs_browser_check.py --site site --out shots/

Serves `--site` on a free local port, then checks that the home page, a how-to guide, the command-line
reference and an API page render (their headings and key content are there), that the navigation leads
from the home page to the others, and that the search finds `guidance_scale`. Writes a screenshot of each
step to `--out` and exits with 1 if a check fails. A manual check, not a test: needs `pip install
playwright` (its own environment is fine) and a Chromium (`apt-get install chromium`: /usr/bin/chromium);
playwright's own browser download is not needed.
"""

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# (path, a heading the page must show, a text its content must hold)
PAGES = [
    ("", "ldm_lightning", "Where to start"),
    ("how-to/many-gpus/", "Many GPUs and many machines", "torchrun"),
    ("reference/cli/", "Command-line keys", "--model.sampling.num_inference_steps"),
    ("reference/api/module/", "LatentDiffusionModule", "predict_step"),
]


def title(page) -> str:
    """The page's first heading, without the permalink sign."""
    return page.locator("article h1").first.inner_text().replace("¶", "").strip()


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """The site on a free port of localhost, in a background thread."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def main() -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("site"))
    parser.add_argument("--out", type=Path, default=Path("docs-shots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    if not (args.site / "index.html").is_file():
        sys.exit(f"{args.site}/index.html not found: run `mkdocs build --strict` first")
    args.out.mkdir(parents=True, exist_ok=True)
    server, base = serve(args.site)
    failures = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAILED") + f"  {what}")
        if not ok:
            failures.append(what)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))

        # Each page renders: its title, its content, no script error, no broken image.
        for path, heading, content in PAGES:
            response = page.goto(base + path)
            page.wait_for_load_state("networkidle")
            name = path.strip("/").replace("/", "-") or "home"
            page.screenshot(path=str(args.out / f"{name}.png"))
            check(response is not None and response.ok, f"{name}: HTTP {response.status if response else '-'}")
            check(title(page) == heading, f"{name}: heading {heading!r}")
            check(content in page.locator("article").inner_text(), f"{name}: shows {content!r}")
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
            check(broken == 0, f"{name}: {broken} broken images")
        # A part's nested keys, as the reference expands them.
        page.goto(base + "reference/cli/#model-sampling")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "reference-cli-model-sampling.png"))
        check(page.locator("#model-sampling").is_visible(), "reference-cli: model.sampling's nested keys shown")
        check(not errors, f"no script errors ({'; '.join(errors) or 'none'})")

        # The navigation leads from the home page to a how-to guide, the reference and an API page.
        page.goto(base)
        page.wait_for_load_state("networkidle")
        for tab, link, heading in [
            ("How-to guides", "Many GPUs and many machines", "Many GPUs and many machines"),
            ("Reference", "Command-line keys", "Command-line keys"),
            ("Reference", "LatentDiffusionModule", "LatentDiffusionModule"),
        ]:
            page.locator(".md-tabs").get_by_role("link", name=tab, exact=True).click()
            page.wait_for_load_state("networkidle")
            page.locator(".md-sidebar--primary").get_by_role("link", name=link, exact=True).first.click()
            page.wait_for_load_state("networkidle")
            shown = title(page)
            check(shown == heading, f"navigation: {tab} → {link} shows {shown!r}")
        page.screenshot(path=str(args.out / "navigation.png"))

        # The search finds guidance_scale, and its first result opens a page that holds it.
        page.goto(base)
        page.wait_for_load_state("networkidle")
        page.locator("input.md-search__input").click()
        page.keyboard.type("guidance_scale", delay=50)
        results = page.locator(".md-search-result__item")
        results.first.wait_for(timeout=15000)
        count = results.count()
        page.screenshot(path=str(args.out / "search.png"))
        check(count > 0, f"search 'guidance_scale': {count} results")
        results.first.locator("a").first.click()
        page.wait_for_load_state("networkidle")
        check("guidance_scale" in page.locator("article").inner_text(), f"search result {page.url} holds it")
        browser.close()
    server.shutdown()
    print(f"{len(failures)} failed; screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
