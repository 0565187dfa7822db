"""The web UI: a Gradio app with one module per tab, talking to the service only over HTTP.

- `build(service)`: the Blocks (Generate, Edit, Tile Upscale, Models, Jobs).
- `mount(app, service)`: the UI inside the service at ``/ui`` (`assetbox serve`; the setting
  ``ASSETBOX_UI=false`` leaves it out).
- `standalone_app(service)`: the UI in a process of its own against a remote service
  (`assetbox ui --server URL`), also at ``/ui``, with the model upload routes relayed so the
  page's uploader posts to its own origin in both cases.
"""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from assetbox.ui import edit, generate, jobs, models, upscale
from assetbox.ui.common import CSS, UI_PATH, Service

__all__ = ["UI_PATH", "Service", "build", "mount", "standalone_app"]


def build(service: Service) -> gr.Blocks:
    """The UI's Blocks, queued with no concurrency limit: its handlers only relay to the
    service, so one browser's job never waits behind another's in this process."""
    with gr.Blocks(title="AI Assets Toolbox", analytics_enabled=False) as blocks:
        with gr.Row():
            gr.Markdown("## AI Assets Toolbox")
            key = gr.Textbox(
                label="API key",
                type="password",
                placeholder="needed when the service requires keys",
                value="",
                scale=0,
                min_width=280,
                elem_id="ab-api-key",
            )
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate.render(service, key)
            with gr.Tab("Edit", id="edit"):
                edit.render(service, key)
            with gr.Tab("Tile Upscale", id="upscale"):
                upscale.render(service, key)
            with gr.Tab("Models", id="models"):
                models.render(service, key)
            with gr.Tab("Jobs", id="jobs"):
                jobs.render(service, key)
    blocks.queue(default_concurrency_limit=None)
    return blocks


def mount(app: FastAPI, service: Service) -> FastAPI:
    """`app` with the UI at ``/ui``."""
    return gr.mount_gradio_app(app, build(service), path=UI_PATH, css=CSS, ssr_mode=False)


def standalone_app(service: Service) -> FastAPI:
    """The UI alone, for `assetbox ui`: ``/`` leads to ``/ui``; the model upload routes are
    relayed to the service (streamed, chunk by chunk) so the uploader's page needs no CORS."""
    app = FastAPI(title="AI Assets Toolbox UI", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH + "/")

    app.include_router(models.upload_relay(service))
    return mount(app, service)
