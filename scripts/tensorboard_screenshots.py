"""Screenshots of a running TensorBoard's tabs, taken by a headless Chromium (a manual check, not a test).

    tensorboard --logdir outputs --port 6007 &
    python scripts/tensorboard_screenshots.py --url http://localhost:6007 --out shots/ \
        --tabs scalars hparams histograms 'images=test/(batch|groups)' 'text=test/batch_prompts'

A tab given as `TAB=REGEX` is shown with REGEX typed into its tag filter. The first chart of the scalars tab is
also shot with the pointer on it (`scalars-hover.png`: the tooltip lists every run's value at that step).
Needs `pip install playwright` and a Chromium (`apt-get install chromium`: /usr/bin/chromium); playwright's
own browser download is not needed.
"""

import argparse
import time
from pathlib import Path

TABS = ("scalars", "hparams", "histograms", "images=test/(batch|groups)", "text=test/batch_prompts")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:6007")
    parser.add_argument("--out", type=Path, default=Path("tensorboard-shots"))
    parser.add_argument("--tabs", nargs="+", default=list(TABS))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--wait", type=float, default=6.0, help="seconds a tab gets to load its data")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        for spec in args.tabs:
            tab, _, tags = spec.partition("=")
            page.goto(f"{args.url}/#{tab}")
            page.wait_for_load_state("networkidle")
            time.sleep(args.wait)
            if tags:
                page.locator("tf-tag-filterer input").locator("visible=true").first.fill(tags)
                time.sleep(args.wait)
            page.screenshot(path=str(args.out / f"{tab}.png"))
            print(f"--- {tab}: {args.out / f'{tab}.png'}")
            if tab == "scalars":
                chart = page.locator("vz-line-chart2").first
                box = chart.bounding_box()
                if box:
                    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
                    time.sleep(1.5)
                    page.screenshot(path=str(args.out / "scalars-hover.png"))
                    page.mouse.move(0, 0)
                    print(f"--- scalars with the pointer on the first chart: {args.out / 'scalars-hover.png'}")
        browser.close()


if __name__ == "__main__":
    main()
