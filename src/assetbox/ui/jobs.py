"""The Jobs tab: the job history (status, kind, progress, times), refreshing itself; cancel a
job; open its outputs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import gradio as gr

from assetbox.ui.common import TERMINAL, Service, relay, save_output

COLUMNS = ["id", "kind", "status", "progress", "created", "started", "finished"]
STATUSES = ["all", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
REFRESH_S = 2.0
HISTORY = 100  # jobs shown, newest first


def _time(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def progress_text(job: dict[str, Any]) -> str:
    """``3/8 units · step 12/30`` while running; the units alone otherwise."""
    progress = job.get("progress") or {}
    done, total = progress.get("done", 0), progress.get("total", 0)
    text = f"{done}/{total} units" if total else "planning"
    if job["status"] in ("running", "cancelling") and progress.get("steps"):
        text += f" · step {progress['step']}/{progress['steps']}"
    return text


def rows(jobs: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            job["id"],
            job["kind"],
            job["status"],
            progress_text(job),
            _time(job.get("created_at")),
            _time(job.get("started_at")),
            _time(job.get("finished_at")),
        ]
        for job in jobs
    ]


def render(service: Service, key: gr.Textbox) -> None:
    with gr.Row():
        status = gr.Dropdown(STATUSES, value="all", label="Status", scale=0, min_width=180)
        refresh = gr.Button("Refresh", scale=0)
    table = gr.Dataframe(
        headers=COLUMNS,
        datatype=["str"] * len(COLUMNS),
        value=[],
        interactive=False,
        label="Jobs (newest first; click a row to select it)",
        elem_id="ab-jobs-table",
    )
    with gr.Row():
        job_id = gr.Textbox(label="Selected job", placeholder="click a row", scale=3)
        cancel = gr.Button("Cancel job", variant="stop", scale=0)
        open_outputs = gr.Button("Open outputs", scale=0)
    message = gr.Markdown(elem_id="ab-jobs-message")
    # Thumbnails a sixth of the width, even for one output (fit_columns would stretch it).
    gallery = gr.Gallery(
        label="Outputs",
        columns=6,
        fit_columns=False,
        object_fit="contain",
        height="auto",
        interactive=False,
        visible=False,
    )
    details = gr.JSON(label="Result and error", visible=False)
    timer = gr.Timer(REFRESH_S)

    @relay
    def load(key: str, status: str) -> list[list[str]]:
        filters: dict[str, Any] = {"limit": HISTORY}
        if status != "all":
            filters["status"] = status
        with service.client(key) as api:
            return rows(api.jobs(**filters))

    def select(event: gr.SelectData) -> str:
        row = event.row_value if event.row_value else []
        return row[0] if row else ""

    @relay
    def cancel_job(key: str, job: str) -> str:
        if not job.strip():
            raise gr.Error("select a job first (click its row)")
        with service.client(key) as api:
            answer = api.cancel(job.strip())
        return f"Job `{answer['id']}` is {answer['status']}."

    @relay
    def outputs(key: str, job: str) -> tuple[Any, Any, str]:
        if not job.strip():
            raise gr.Error("select a job first (click its row)")
        with service.client(key) as api:
            found = api.job(job.strip())
            folder = service.scratch()
            images = [
                (str(save_output(api, found, i, folder)), f"#{i} seed {o.get('seed', '-')}")
                for i, o in enumerate(found.get("outputs", []))
                if o.get("media_type", "").startswith("image/")
            ]
        extra = {k: found[k] for k in ("result", "error") if found.get(k)}
        note = f"Job `{found['id']}`: {found['status']}, {len(found.get('outputs', []))} outputs."
        if found["status"] not in TERMINAL:
            note += " It is still running; its outputs appear when it ends."
        return (
            gr.Gallery(value=images, visible=bool(images)),
            gr.JSON(value=json.loads(json.dumps(extra)), visible=bool(extra)),
            note,
        )

    gr.on([refresh.click, timer.tick, status.change], load, [key, status], table)
    table.select(select, None, job_id)
    cancel.click(cancel_job, [key, job_id], message).then(load, [key, status], table)
    open_outputs.click(outputs, [key, job_id], [gallery, details, message])
