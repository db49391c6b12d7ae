"""Many users at once: concurrent browser sessions against one attnviz server on 127.0.0.1.

    .venv/bin/python bench/load.py [--sessions 8] [--requests 13] [--long 0] [--long-requests 1]
                                   [--hostile 0] [--rss-bound-gb 4.5]

Starts `streamlit run app.py` with the demo's settings (.streamlit/config.toml and
ATTNVIZ_MAX_TOKENS=8192, as in the Dockerfile), then drives ``--sessions`` browser contexts
of one headless chromium at the same time. Session i plays USERS[i % 4]: three type sentences
on the text page (an encoder, an encoder-decoder, a decoder), the fourth uploads photos on the
image page (dinov2-small). Each does ``--requests`` requests of its own, one after another;
each input is new to the server (no cache hit): sentences grow by three words, photos are
crops of the sample photos of their own size and place. After each one the session waits for
the result line naming its input, downloads the result (.npz) and compares it with a capture
of the same input made in this process: tokens equal and every attention weight within 1e-3.
A result equal to another request's capture counts as cross-talk.

With ``--long N`` the last N sessions instead read long documents on smollm2-135m, cut to
its 8,192 tokens, ``--long-requests`` of them each. Their results (about 750 MB of recorded
queries and keys) are over the demo's download bound, so these sessions download the head
heatmap's CSV (the default head, block-aggregated) and compare it with the same view of the
reference capture, every number within 1e-3.

With ``--hostile N`` the same run is made twice on fresh servers, first without and then with
N hostile sessions beside the normal ones, each repeating (until the normal sessions are done,
at most HOSTILE_ROUNDS times) what an attacker tried against the demo: a model upload whose
config claims 100,000 positions, a pasted text of two million zero-width joiners, a zip that
expands to gigabytes, and ``?model=`` probes of server paths. The hostile sessions must get a
refusal or a warning each time, and the normal sessions' p95 latency with them is compared
with the run without them.

Prints sessions, requests, errors, the cross-talk check, latency percentiles (from sending the
input to the new result on screen), and the server's resident memory (now and peak, from
/proc) against the bound stated in docs/deploy.md. Exits 1 on any error, cross-talk, a peak
above the bound, or (with hostile sessions) a p95 more than twice the run without them.
Requests are bounded (sessions x requests, hostile rounds) and the server stops at the end.
The server runs the demo profile, as in the Dockerfile: ATTNVIZ_HOSTED=1,
ATTNVIZ_MAX_TOKENS=8192 and glibc's MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=4194304.
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
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "corpus")]  # the tests' helpers (attnviz itself is installed)

from browser import CHROMIUM, CHROMIUM_ARGS, NO_STATUS_WIDGET, SCRIPT_DONE, free_port, start_server, wait_healthy  # noqa: E402
from make_corpus import overlapping_zip_bomb, tiny_gpt_neo, with_config, zip_of  # noqa: E402

import attnviz  # noqa: E402
from attnviz.inputs import open_image  # noqa: E402
from attnviz.models import store  # noqa: E402
from attnviz.result import AttentionResult  # noqa: E402
from attnviz.samples import SAMPLES, sample_bytes  # noqa: E402
from attnviz.viz import text as viz  # noqa: E402

# (page, model) of each kind of user: session i plays USERS[i % len(USERS)]
USERS = [("text", "minilm-l6"), ("text", "t5-small-titler"), ("text", "smollm2-135m"), ("image", "dinov2-small")]
LONG_USER = ("text", "smollm2-135m")  # the --long sessions: documents cut to the model's 8,192 tokens
IMAGE_SIZE = 224  # the image page's default input size (shorter side, px)
WORDS = ("cat dog river mountain quietly bright engine letter garden window travel silver orange "
         "whisper market ancient follow because under between yesterday music kitchen ocean paper "
         "thunder gentle winter forest number castle honest rapid purple island bridge").split()
TOKEN_CAP = "8192"
DEMO_ENV = {"ATTNVIZ_MAX_TOKENS": TOKEN_CAP, "ATTNVIZ_HOSTED": "1",  # the Dockerfile's demo profile
            "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "4194304"}
TIMEOUT_MS = 300_000
LONG_TIMEOUT_MS = 600_000  # a document's capture (35 s alone) may queue behind another on the model's lock
HOSTILE_ROUNDS = 6


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


def document(session: int, request: int) -> str:
    """A long session's ``request``-th document: a paragraph repeated past 8,192 tokens, its
    opening line unique."""
    from text import PARAGRAPH  # bench/text.py

    return f"Visitor {session} reads document {request}. " + PARAGRAPH * 120


def user(args, session: int) -> tuple[str, str, bool]:
    """(page, model, long) of a session: the last ``args.long`` sessions read long documents."""
    if session >= args.sessions - args.long:
        return (*LONG_USER, True)
    return (*USERS[session % len(USERS)], False)


def request_input(args, session: int, request: int):
    """What the session sends: a sentence (text users), a document (long sessions) or a photo."""
    page, _, long = user(args, session)
    if long:
        return document(session, request)
    return sentence(session, request) if page == "text" else photo(session, request)


def requests_of(args, session: int) -> int:
    return args.long_requests if user(args, session)[2] else args.requests


def rss_gb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of process ``pid`` in GB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1e6, int(fields["VmHWM"].split()[0]) / 1e6)


def references(args) -> dict[tuple[int, int], AttentionResult | str]:
    """What each request must give: the same capture, made here (for long sessions, the CSV
    of its head heatmap, see :func:`heatmap_csv`)."""
    os.environ.update(DEMO_ENV)  # the server's token caps and budgets
    models = {}
    refs = {}
    for i in range(args.sessions):
        page, name, long = user(args, i)
        model = models.get(name) or models.setdefault(name, attnviz.load_model(name))
        for j in range(requests_of(args, i)):
            data = request_input(args, i, j)
            if long:
                refs[i, j] = heatmap_csv(attnviz.capture(model, data))
            elif page == "text":
                refs[i, j] = attnviz.capture(model, data)
            else:
                refs[i, j] = attnviz.capture(model, open_image(data[1], data[0]), size=IMAGE_SIZE)
    return refs


def heatmap_csv(result: AttentionResult) -> str:
    """The CSV the text page's head heatmap offers by default: the last layer, head 0."""
    stack = result.stacks[0]
    return viz.head_heatmap(result, stack, result.attn[stack].shape[0] - 1, 0, viz.TextOptions())[1]()


def csv_numbers(text: str) -> np.ndarray:
    """The numbers of a view's CSV (its first two columns label the rows)."""
    import csv

    rows = list(csv.reader(io.StringIO(text)))[1:]
    return np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float64)


def same(a: AttentionResult | str, b: AttentionResult | str) -> bool:
    """Whether two results (or two heatmap CSVs) agree: tokens equal, every weight within 1e-3."""
    if isinstance(a, str) or isinstance(b, str):
        if not (isinstance(a, str) and isinstance(b, str)):
            return False
        x, y = csv_numbers(a), csv_numbers(b)
        return x.shape == y.shape and np.allclose(x, y, atol=1e-3, rtol=0)
    return (a.tokens == b.tokens and a.attn.keys() == b.attn.keys()
            and all(np.allclose(a.attn[s].astype(np.float32), b.attn[s].astype(np.float32), atol=1e-3, rtol=0)
                    for s in a.attn))


DOWNLOAD = {"text": "Result .npz", "image": "Attention maps (.npz)"}  # each page's button


async def download_result(page, button: str, attempts: int = 3) -> AttentionResult | str:
    """Click the download ``button`` and read the .npz (or, for "Matrix .csv", the CSV text);
    a download cancelled by a rerun is tried again."""
    for attempt in range(attempts):
        try:
            async with page.expect_download(timeout=TIMEOUT_MS) as info:
                await page.get_by_role("button", name=button).first.click()
            data = Path(await (await info.value).path()).read_bytes()
            return data.decode() if button.endswith(".csv") else AttentionResult.load(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == attempts - 1:
                raise
            await page.wait_for_function(NO_STATUS_WIDGET, timeout=TIMEOUT_MS)


async def send(page, kind: str, name: str, data, ref: AttentionResult | str) -> None:
    """Send one input (a sentence, a document, or a photo's file name and bytes) and return
    when the result line names it."""
    timeout = LONG_TIMEOUT_MS if isinstance(ref, str) else TIMEOUT_MS
    if kind == "text":
        tokens = int(TOKEN_CAP) if isinstance(ref, str) else len(ref.tokens)  # documents fill the cap
        shown = f"{name} · {tokens} tokens ·"
        line = page.get_by_text(shown)
        before = await line.first.inner_text() if await line.count() else None  # a document's line names
        box = page.locator('textarea[aria-label="Text"]')                       # no input: wait for a new one
        await box.fill(data, timeout=timeout)
        await box.press("Control+Enter")
        if before is not None:
            await page.wait_for_function(
                "([shown, before]) => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                ".some(e => e.innerText.includes(shown) && e.innerText !== before)", arg=[shown, before],
                timeout=timeout)
            return
    else:
        file_name, png = data
        await page.locator('[data-testid="stFileUploaderDropzone"] input[type="file"]').set_input_files(
            {"name": file_name, "mimeType": "image/png", "buffer": png})
        (width, height), (seen_h, seen_w) = Image.open(io.BytesIO(png)).size, ref.image.shape[:2]
        shown = f"{file_name} ({width} x {height} px) → {name} saw {seen_w} x {seen_h} px"
    await page.get_by_text(shown).first.wait_for(timeout=timeout)


async def session(browser, base: str, i: int, args, refs, out: dict) -> None:
    """One user: its page and model, its inputs, each result checked."""
    kind, name, long = user(args, i)
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        await page.goto(f"{base}/{kind}?model={name}", timeout=TIMEOUT_MS)
        await page.wait_for_selector(SCRIPT_DONE, timeout=TIMEOUT_MS)  # the first run has drawn the page
        for j in range(requests_of(args, i)):
            ref = refs[i, j]
            try:
                started = time.perf_counter()
                await send(page, kind, name, request_input(args, i, j), ref)
                out["long_latency" if long else "latency"].append(time.perf_counter() - started)
                out["requests"] += 1
                await page.wait_for_function(NO_STATUS_WIDGET, timeout=TIMEOUT_MS)  # the rest of the page drawn
                shown = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                if await shown.count():
                    out["errors"].append(f"session {i} request {j}: {await shown.first.inner_text()}")
                got = await download_result(page, "Matrix .csv" if long else DOWNLOAD[kind])
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


def hostile_files(folder: Path) -> dict[str, bytes]:
    """The attackers' uploads: a GPT-Neo zip whose config claims 100,000 positions (20 GB of
    mask buffers), and a 60 kB zip of 70 entries sharing one 32 MB block (2.2 GB unpacked)."""
    neo = {p.name: p.read_bytes() for p in tiny_gpt_neo(folder / "neo").iterdir()}
    return {"positions.zip": zip_of(with_config(neo, max_position_embeddings=100_000)),
            "bomb.zip": overlapping_zip_bomb(70, 32 << 20)}


async def attack(page, base: str, what: str, files: dict[str, bytes]) -> str | None:
    """One attack; None when the server refused or warned as it should, else what went wrong."""
    alerts = '[data-testid="stAlertContentError"], [data-testid="stAlertContentWarning"]'
    if what in files:
        await page.goto(f"{base}/train", timeout=TIMEOUT_MS)
        await page.wait_for_selector(SCRIPT_DONE, timeout=TIMEOUT_MS)
        await page.get_by_text("Upload a model (zip or files)").click()
        await page.locator('[data-testid="stFileUploaderDropzone"] input[type="file"]').set_input_files(
            {"name": what, "mimeType": "application/zip", "buffer": files[what]})
        expect = "parameters and buffers" if what == "positions.zip" else "Unpacked"
    elif what == "joiners":
        await page.goto(f"{base}/text?model=minilm-l6", timeout=TIMEOUT_MS)
        await page.wait_for_selector(SCRIPT_DONE, timeout=TIMEOUT_MS)
        box = page.locator('textarea[aria-label="Text"]')
        await box.fill("\u200d" * 2_000_000, timeout=TIMEOUT_MS)
        await box.press("Control+Enter")
        expect = "only the first"
    else:  # a ?model= probe of server paths: the default model, and nothing that tells paths apart
        for probe in ("/etc", "/no/such/folder", "../../root", str(store.home())):
            await page.goto(f"{base}/text?model={probe}", timeout=TIMEOUT_MS)
            await page.wait_for_selector(SCRIPT_DONE, timeout=TIMEOUT_MS)
            if await page.locator(alerts).count() or not await page.get_by_text("minilm-l6 · ").count():
                return f"?model={probe} was not answered with the default model alone"
        return None
    try:
        await page.locator(alerts).filter(has_text=expect).first.wait_for(timeout=TIMEOUT_MS)
    except Exception:  # noqa: BLE001 - reported as a failed defence
        return f"{what}: no message containing {expect!r}"
    return None


async def hostile(browser, base: str, k: int, files: dict[str, bytes], normal_done: asyncio.Event, out: dict) -> None:
    """A hostile visitor: the attacks in turn, until the normal sessions are done."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    kinds = ["positions.zip", "joiners", "bomb.zip", "probe"]
    try:
        for r in range(HOSTILE_ROUNDS * len(kinds)):
            if normal_done.is_set():
                break
            what = kinds[(k + r) % len(kinds)]
            try:
                failed = await attack(page, base, what, files)
            except Exception as e:  # noqa: BLE001 - a failed defence, reported
                failed = f"{what}: {type(e).__name__}: {str(e).splitlines()[0]}"
            out["attacks"] += 1
            if failed:
                out["breaches"].append(f"hostile {k}: {failed}")
    finally:
        await context.close()


async def drive(base: str, args, refs, n_hostile: int = 0, files: dict[str, bytes] | None = None) -> dict:
    from playwright.async_api import async_playwright

    out = {"requests": 0, "own": 0, "latency": [], "long_latency": [], "errors": [], "crosstalk": [], "attacks": 0,
           "breaches": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        done = asyncio.Event()

        async def normal():
            await asyncio.gather(*(session(browser, base, i, args, refs, out) for i in range(args.sessions)))
            done.set()
        await asyncio.gather(normal(), *(hostile(browser, base, k, files, done, out) for k in range(n_hostile)))
        await browser.close()
    return out


def serve_and_drive(args, refs, n_hostile: int, files) -> tuple[dict, float, float, float]:
    """A fresh server with the demo profile, driven; (out, wall seconds, RSS, peak RSS in GB)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, DEMO_ENV)  # its log: test-artifacts/
    try:
        wait_healthy(base)
        started = time.perf_counter()
        out = asyncio.run(drive(base, args, refs, n_hostile, files))
        wall = time.perf_counter() - started
        rss, peak = rss_gb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out, wall, rss, peak


def p95(latencies: list[float]) -> float:
    lat = sorted(latencies) or [float("nan")]
    return lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]


def report(args, out: dict, wall: float, rss: float, peak: float, n_hostile: int) -> tuple[list, bool]:
    """The table's rows for one run, and whether the run passed."""
    lat = sorted(out["latency"]) or [float("nan")]
    crosstalk_ok = not out["crosstalk"] and out["own"] == out["requests"]
    rows = [
        ("sessions (concurrent browser contexts)", f"{args.sessions} normal, {n_hostile} hostile"),
        ("users", ", ".join(f"{kind} page on {name}" for kind, name in USERS[: min(args.sessions - args.long, len(USERS))])
         + (f"; {args.long} reading 8,192-token documents on {LONG_USER[1]}" if args.long else "")),
        ("requests (new inputs captured)", f"{out['requests']} of {sum(requests_of(args, i) for i in range(args.sessions))}"),
        ("errors", f"{len(out['errors'])}"),
        ("cross-talk check", f"{'pass' if crosstalk_ok else 'FAIL'}: {out['own']} of {out['requests']} "
                             f"downloads equal their own input's capture, {len(out['crosstalk'])} another's"),
        ("attacks (refused or warned as they should)", f"{out['attacks'] - len(out['breaches'])} of {out['attacks']}"),
        ("latency p50 (s)", f"{statistics.median(lat):.2f}"),
        ("latency p95 (s)", f"{p95(out['latency']):.2f}"),
        ("latency max (s)", f"{lat[-1]:.2f}"),
        ("8,192-token documents: latency p50, max (s)",
         f"{statistics.median(out['long_latency']):.1f}, {max(out['long_latency']):.1f}" if out["long_latency"] else "none"),
        ("wall time (s)", f"{wall:.0f}"),
        ("server RSS after (GB)", f"{rss:.2f}"),
        ("server peak RSS (GB)", f"{peak:.2f}  (bound {args.rss_bound_gb:.1f}: "
                                 f"{'within' if peak <= args.rss_bound_gb else 'EXCEEDED'})"),
    ]
    ok = not out["errors"] and crosstalk_ok and peak <= args.rss_bound_gb and not out["breaches"]
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--requests", type=int, default=13, help="inputs per session")
    ap.add_argument("--hostile", type=int, default=0, help="hostile sessions beside the normal ones "
                                                            "(then a run without them is made first)")
    ap.add_argument("--long", type=int, default=0, help="sessions (the last ones) reading 8,192-token documents")
    ap.add_argument("--long-requests", type=int, default=1, help="documents per long session")
    ap.add_argument("--rss-bound-gb", type=float, default=4.5, help="the bound docs/deploy.md states")
    args = ap.parse_args()

    args.long = min(max(args.long, 0), args.sessions)
    print(f"reference captures for {args.sessions} sessions' inputs…", flush=True)
    t0 = time.perf_counter()
    refs = references(args)
    print(f"… {time.perf_counter() - t0:.0f} s", flush=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = hostile_files(Path(tmp)) if args.hostile else None
        runs = [(0, serve_and_drive(args, refs, 0, None))]
        if args.hostile:
            runs.append((args.hostile, serve_and_drive(args, refs, args.hostile, files)))
    ok = True
    tables = []
    for n_hostile, (out, wall, rss, peak) in runs:
        rows, passed = report(args, out, wall, rss, peak, n_hostile)
        ok &= passed
        tables.append((rows, out))
    width = max(len(k) for k, _ in tables[0][0])
    header = ["without hostile sessions"] + ([f"with {args.hostile} hostile"] if args.hostile else [])
    print(f"\n{'what':<{width}}  " + "  ".join(f"{h:<44}" for h in header))
    print(f"{'-' * width}  " + "  ".join("-" * 44 for _ in header))
    for r, (k, _) in enumerate(tables[0][0]):
        print(f"{k:<{width}}  " + "  ".join(f"{rows[r][1]:<44}" for rows, _ in tables))
    if args.hostile:
        ratio = p95(tables[1][1]["latency"]) / p95(tables[0][1]["latency"])
        print(f"{'p95 with / without hostile sessions':<{width}}  {ratio:.2f}x  (target <= 2x: "
              f"{'met' if ratio <= 2 else 'MISSED'})")
        ok &= ratio <= 2
    for _, out in tables:
        for line in (out["errors"] + out["crosstalk"] + out["breaches"])[:20]:
            print("  ", line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
