"""Many users at once: concurrent browser sessions against one attnviz server on 127.0.0.1.

    .venv/bin/python bench/load.py [--sessions 8] [--requests 13] [--rss-bound-gb 3.0]

Starts `streamlit run app.py` with the demo's settings (.streamlit/config.toml and
ATTNVIZ_MAX_TOKENS=1024, as in the Dockerfile), then drives ``--sessions`` browser contexts
of one headless chromium at the same time. Session i plays USERS[i % 4]: three type sentences
on the text page (an encoder, an encoder-decoder, a decoder), the fourth uploads photos on the
image page (dinov2-small). Each does ``--requests`` requests of its own, one after another;
each input is new to the server (no cache hit): sentences grow by three words, photos are
crops of the sample photos of their own size and place. After each one the session waits for
the result line naming its input, downloads the result (.npz) and compares it with a capture
of the same input made in this process: tokens equal and every attention weight within 1e-3.
A result equal to another request's capture counts as cross-talk.

Prints sessions, requests, errors, the cross-talk check, latency percentiles (from sending the
input to the new result on screen), and the server's resident memory (now and peak, from
/proc) against the bound stated in docs/deploy.md. Exits 1 on any error, cross-talk, or a
peak above the bound. Requests are bounded (sessions x requests) and the server stops at the
end.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers of the tests (attnviz itself is installed)

import attnviz  # noqa: E402
from browser import (CHROMIUM, CHROMIUM_ARGS, NO_STATUS_WIDGET, SCRIPT_DONE, free_port,  # noqa: E402
                     start_server, wait_healthy)
from attnviz.inputs import open_image  # noqa: E402
from attnviz.result import AttentionResult  # noqa: E402
from attnviz.samples import SAMPLES, sample_bytes  # noqa: E402

# (page, model) of each kind of user: session i plays USERS[i % len(USERS)]
USERS = [("text", "minilm-l6"), ("text", "t5-small-titler"), ("text", "smollm2-135m"), ("image", "dinov2-small")]
IMAGE_SIZE = 224  # the image page's default input size (shorter side, px)
WORDS = ("cat dog river mountain quietly bright engine letter garden window travel silver orange "
         "whisper market ancient follow because under between yesterday music kitchen ocean paper "
         "thunder gentle winter forest number castle honest rapid purple island bridge").split()
TOKEN_CAP = "1024"
TIMEOUT_MS = 300_000


def sentence(session: int, request: int) -> str:
    """Session ``session``'s ``request``-th text: unique, and 3 words longer than the one before."""
    rng = np.random.default_rng(1000 * session + request)
    words = " ".join(rng.choice(WORDS, 6 + 3 * request))
    return f"Visitor {session} asks question {request}: {words}."


def photo(session: int, request: int) -> tuple[str, bytes]:
    """Session ``session``'s ``request``-th upload: (file name, PNG bytes), a crop of a sample
    photo of its own size and place."""
    rng = np.random.default_rng(1000 * session + request)
    sample = list(SAMPLES)[request % len(SAMPLES)]
    image = open_image(sample_bytes(sample))
    w, h = (int(rng.integers(s // 2, s + 1)) for s in image.size)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    buf = io.BytesIO()
    image.crop((x, y, x + w, y + h)).save(buf, format="PNG")
    return f"visitor{session}-{request}-{sample}.png", buf.getvalue()


def request_input(session: int, request: int):
    """What the session sends: a sentence (text users) or a photo (image users)."""
    page, _ = USERS[session % len(USERS)]
    return sentence(session, request) if page == "text" else photo(session, request)


def rss_gb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of process ``pid`` in GB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1e6, int(fields["VmHWM"].split()[0]) / 1e6)


def references(sessions: int, requests: int) -> dict[tuple[int, int], AttentionResult]:
    """What each request must give: the same capture, made here."""
    os.environ["ATTNVIZ_MAX_TOKENS"] = TOKEN_CAP
    models = {}
    refs = {}
    for i in range(sessions):
        page, name = USERS[i % len(USERS)]
        model = models.get(name) or models.setdefault(name, attnviz.load_model(name))
        for j in range(requests):
            if page == "text":
                refs[i, j] = attnviz.capture(model, sentence(i, j))
            else:
                file_name, data = photo(i, j)
                refs[i, j] = attnviz.capture(model, open_image(data, file_name), size=IMAGE_SIZE)
    return refs


def same(a: AttentionResult, b: AttentionResult) -> bool:
    return (a.tokens == b.tokens and a.attn.keys() == b.attn.keys()
            and all(np.allclose(a.attn[s].astype(np.float32), b.attn[s].astype(np.float32), atol=1e-3, rtol=0)
                    for s in a.attn))


DOWNLOAD = {"text": "Result .npz", "image": "Attention maps (.npz)"}  # each page's button


async def download_result(page, button: str, attempts: int = 3) -> AttentionResult:
    """Click the download ``button`` and read the .npz; a download cancelled by a rerun is
    tried again."""
    for attempt in range(attempts):
        try:
            async with page.expect_download(timeout=TIMEOUT_MS) as info:
                await page.get_by_role("button", name=button).click()
            download = await info.value
            return AttentionResult.load(io.BytesIO(Path(await download.path()).read_bytes()))
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == attempts - 1:
                raise
            await page.wait_for_function(NO_STATUS_WIDGET, timeout=TIMEOUT_MS)


async def send(page, kind: str, name: str, data, ref: AttentionResult) -> None:
    """Send one input (a sentence, or a photo's file name and bytes) and return when the
    result line names it."""
    if kind == "text":
        box = page.locator('textarea[aria-label="Text"]')
        await box.fill(data)
        await box.press("Control+Enter")
        shown = f"{name} · {len(ref.tokens)} tokens ·"
    else:
        file_name, png = data
        await page.locator('[data-testid="stFileUploaderDropzone"] input[type="file"]').set_input_files(
            {"name": file_name, "mimeType": "image/png", "buffer": png})
        (width, height), (seen_h, seen_w) = Image.open(io.BytesIO(png)).size, ref.image.shape[:2]
        shown = f"{file_name} ({width} x {height} px) → {name} saw {seen_w} x {seen_h} px"
    await page.get_by_text(shown).first.wait_for(timeout=TIMEOUT_MS)


async def session(browser, base: str, i: int, requests: int, refs, out: dict) -> None:
    """One user: its page and model, ``requests`` inputs, each result checked."""
    kind, name = USERS[i % len(USERS)]
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        await page.goto(f"{base}/{kind}?model={name}", timeout=TIMEOUT_MS)
        await page.wait_for_selector(SCRIPT_DONE, timeout=TIMEOUT_MS)  # the first run has drawn the page
        for j in range(requests):
            ref = refs[i, j]
            try:
                started = time.perf_counter()
                await send(page, kind, name, request_input(i, j), ref)
                out["latency"].append(time.perf_counter() - started)
                out["requests"] += 1
                await page.wait_for_function(NO_STATUS_WIDGET, timeout=TIMEOUT_MS)  # the rest of the page drawn
                shown = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                if await shown.count():
                    out["errors"].append(f"session {i} request {j}: {await shown.first.inner_text()}")
                got = await download_result(page, DOWNLOAD[kind])
            except Exception as e:  # noqa: BLE001 - an error of this request; the session goes on
                out["errors"].append(f"session {i} request {j}: {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            if same(got, ref):
                out["own"] += 1
            else:
                others = [k for k, r in refs.items() if k != (i, j) and same(got, r)]
                out["crosstalk" if others else "errors"].append(
                    f"session {i} request {j}: the result is {'that of ' + str(others[0]) if others else 'wrong'}")
    except Exception as e:  # noqa: BLE001 - the session could not go on: an error, the others go on
        out["errors"].append(f"session {i}: {type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        out["errors"] += [f"session {i}: page error {e}" for e in page_errors]
        await context.close()


async def drive(base: str, sessions: int, requests: int, refs) -> dict:
    from playwright.async_api import async_playwright

    out = {"requests": 0, "own": 0, "latency": [], "errors": [], "crosstalk": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        await asyncio.gather(*(session(browser, base, i, requests, refs, out) for i in range(sessions)))
        await browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--requests", type=int, default=13, help="inputs per session")
    ap.add_argument("--rss-bound-gb", type=float, default=3.0, help="the bound docs/deploy.md states")
    args = ap.parse_args()

    print(f"reference captures for {args.sessions} x {args.requests} inputs…", flush=True)
    t0 = time.perf_counter()
    refs = references(args.sessions, args.requests)
    print(f"… {time.perf_counter() - t0:.0f} s", flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, {"ATTNVIZ_MAX_TOKENS": TOKEN_CAP})  # its log: test-artifacts/
    try:
        wait_healthy(base)
        started = time.perf_counter()
        out = asyncio.run(drive(base, args.sessions, args.requests, refs))
        wall = time.perf_counter() - started
        rss, peak = rss_gb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    lat = sorted(out["latency"]) or [float("nan")]
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    crosstalk_ok = not out["crosstalk"] and out["own"] == out["requests"]
    rows = [
        ("sessions (concurrent browser contexts)", f"{args.sessions}"),
        ("users", ", ".join(f"{kind} page on {name}" for kind, name in USERS[: min(args.sessions, len(USERS))])),
        ("requests (new inputs captured)", f"{out['requests']} of {args.sessions * args.requests}"),
        ("errors", f"{len(out['errors'])}"),
        ("cross-talk check", f"{'pass' if crosstalk_ok else 'FAIL'}: {out['own']} of {out['requests']} "
                             f"downloads equal their own input's capture, {len(out['crosstalk'])} another's"),
        ("latency p50 (s)", f"{statistics.median(lat):.2f}"),
        ("latency p95 (s)", f"{p95:.2f}"),
        ("latency max (s)", f"{lat[-1]:.2f}"),
        ("wall time (s)", f"{wall:.0f}"),
        ("server RSS after (GB)", f"{rss:.2f}"),
        ("server peak RSS (GB)", f"{peak:.2f}  (bound {args.rss_bound_gb:.1f}: "
                                 f"{'within' if peak <= args.rss_bound_gb else 'EXCEEDED'})"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n{'what':<{width}}  value\n{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for line in (out["errors"] + out["crosstalk"])[:20]:
        print("  ", line)
    return 0 if not out["errors"] and crosstalk_ok and peak <= args.rss_bound_gb else 1


if __name__ == "__main__":
    sys.exit(main())
