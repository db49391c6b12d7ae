"""Nothing waits silently, in chromium: on a server whose computations' memory fits one long
capture and little more (ATTNVIZ_JOB_BYTES), a second browser opening the text page while the
first reads a long text on smollm2-135m sees its request waiting, with its place in line and a
Cancel button; Cancel leaves a "Run again" button; the long capture is not disturbed, and Run
again then gives the second browser its result."""
import re

import pytest
from browser import SCRIPT_DONE, serving, wait_for_app

from attnviz.capture import estimate_bytes

LONG = " ".join(f"Sentence {i} tells how the river met the old stone bridge near the hill." for i in range(240))
CAPTION = re.compile(r"smollm2-135m · \d{4} tokens")


@pytest.mark.browser
def test_a_waiting_request_shows_its_place_and_can_be_cancelled(_browser, smollm):
    need = estimate_bytes(smollm, LONG)  # the server reads the same budgets: the same estimate
    env = {"ATTNVIZ_WORKERS": "1", "ATTNVIZ_JOB_BYTES": str(need + 1_000_000)}  # a sentence does not fit beside it
    with serving(env) as url:
        reader, visitor = (_browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2))
        try:
            first = reader.new_page()
            first.set_default_timeout(600_000)
            first.goto(f"{url}/text?model=smollm2-135m")
            wait_for_app(first)
            box = first.get_by_label("Text", exact=True)
            box.fill(LONG)
            box.press("Control+Enter")
            first.locator('[data-testid="stProgress"]').first.wait_for()  # the long capture runs

            second = visitor.new_page()
            second.set_default_timeout(600_000)
            second.goto(f"{url}/text?model=minilm-l6")
            waiting = second.get_by_text(re.compile(r"minilm-l6 on your text: waiting for memory, 1st in line"))
            waiting.wait_for(timeout=120_000)
            second.get_by_role("button", name="Cancel").click()
            second.get_by_text("minilm-l6 on your text: cancelled.").wait_for()
            assert second.get_by_role("button", name="Run again").count() == 1

            first.get_by_text(CAPTION).first.wait_for()  # the long text's result
            second.get_by_role("button", name="Run again").click()
            second.get_by_text(re.compile(r"minilm-l6 · \d+ tokens")).first.wait_for()
            second.wait_for_selector(SCRIPT_DONE)
            for page in (first, second):
                assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0
        finally:
            reader.close()
            visitor.close()
