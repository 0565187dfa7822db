"""The Jobs tab in a browser: the history refreshes itself; a running job is cancelled."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.ui.conftest import open_tab, shoot

# Long enough on tiny SD 1.5 that the job is still running when the browser cancels it.
LONG = {"model": "tiny-sd15", "width": 64, "height": 64, "steps": 400, "prompts": ["a"] * 8}


def select_job(page, job_id: str) -> None:
    """Click the job's row until the tab shows it selected: the table refreshes itself every
    2 s, and a click that lands while it is being replaced selects nothing."""
    row = page.get_by_role("row").filter(has_text=job_id)
    for _ in range(5):
        row.get_by_text(job_id).click()
        try:
            expect(page.get_by_label("Selected job")).to_have_value(job_id, timeout=3_000)
            return
        except AssertionError:
            continue
    expect(page.get_by_label("Selected job")).to_have_value(job_id)


def test_a_running_job_is_cancelled_from_the_jobs_tab(page, api) -> None:
    open_tab(page, "Jobs")
    job = api.submit("generate", **LONG)
    # The table refreshes itself: the new job appears without a click on Refresh.
    row = page.get_by_role("row").filter(has_text=job["id"])
    row.filter(has_text="running").wait_for()
    select_job(page, job["id"])
    page.get_by_role("button", name="Cancel job").click()
    page.get_by_text(f"Job {job['id']} is").wait_for()
    assert api.wait(job["id"])["status"] == "cancelled"
    # ... and the history shows it, again without a click.
    row.filter(has_text="cancelled").wait_for()


def test_outputs_of_a_finished_job_open_with_their_seeds(page, api) -> None:
    job = api.submit(
        "generate",
        model="tiny-sd15",
        width=64,
        height=64,
        steps=2,
        prompts=["a red cube"],
        seed=11,
        wait=120,
    )
    assert job["status"] == "succeeded"
    open_tab(page, "Jobs")
    page.get_by_role("row").filter(has_text=job["id"]).wait_for()
    select_job(page, job["id"])
    page.get_by_role("button", name="Open outputs").click()
    page.get_by_text(f"Job {job['id']}: succeeded, 1 outputs.").wait_for()
    page.get_by_text(f"#0 seed {job['outputs'][0]['seed']}").first.wait_for()
    shoot(page, "ui-jobs.png")
