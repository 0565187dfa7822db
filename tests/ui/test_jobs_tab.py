"""The Jobs tab in a browser: the history refreshes itself; a running job is cancelled."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.ui.conftest import open_tab, shoot

# Long enough on tiny SD 1.5 that the job is still running when the browser cancels it.
LONG = {"model": "tiny-sd15", "width": 64, "height": 64, "steps": 400, "prompts": ["a"] * 8}


def test_a_running_job_is_cancelled_from_the_jobs_tab(page, api) -> None:
    open_tab(page, "Jobs")
    job = api.submit("generate", **LONG)
    # The table refreshes itself: the new job appears without a click on Refresh.
    row = page.get_by_role("row").filter(has_text=job["id"])
    row.filter(has_text="running").wait_for()
    row.get_by_text(job["id"]).click()
    expect(page.get_by_label("Selected job")).to_have_value(job["id"])
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
    page.get_by_role("row").filter(has_text=job["id"]).get_by_text(job["id"]).click()
    page.get_by_role("button", name="Open outputs").click()
    page.get_by_text(f"Job {job['id']}: succeeded, 1 outputs.").wait_for()
    page.get_by_text(f"#0 seed {job['outputs'][0]['seed']}").first.wait_for()
    shoot(page, "ui-jobs.png")
