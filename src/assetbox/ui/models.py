"""The Models tab: the store's models (kind, family, size), filtered by kind; upload a model file
from the browser in resumable chunks; delete a model after a confirmation.

The browser sends the file's chunks straight to the upload API (``/v1/models/uploads``) beside
the page, so a multi-GB file never passes through Gradio. In `assetbox ui --server URL` the page
comes from the UI process, so `upload_relay` gives that process the same four routes, each
request streamed on to the service.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Any

import gradio as gr
import httpx
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from assetbox.models.store import KINDS
from assetbox.ui.common import Service, bar, relay

COLUMNS = ["id", "kind", "family", "architecture", "size", "added"]
KIND_FILTER = ["all", *KINDS]
# Kinds a single uploaded file can be: a captioner is a folder of files.
UPLOAD_KINDS = [kind for kind in KINDS if kind != "captioner"]
UPLOADS_PATH = "/v1/models/uploads"
CHUNK_BYTES = 8 * 1024**2
# Tries of one chunk (after a broken connection or a server error) before the upload stops;
# clicking Upload again with the same file goes on from where the service stands.
CHUNK_TRIES = 6
# The service's upload ids; the relay refuses anything else rather than pass on a path.
UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


def size_text(size: int) -> str:
    """Bytes as people read them: ``812 B``, ``3.4 MB``, ``6.9 GB`` (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    value, unit = size / 1000, "kB"
    for larger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{value:.1f} {unit}"


def rows(models: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows, grouped by kind then family (the service lists by kind, then id)."""
    ordered = sorted(models, key=lambda m: (m["kind"], m.get("family") or "", m["id"]))
    return [
        [
            m["id"],
            m["kind"],
            m.get("family") or "",
            m["architecture"],
            size_text(m["size"]),
            datetime.fromisoformat(m["added"]).strftime("%Y-%m-%d %H:%M"),
        ]
        for m in ordered
    ]


def uploader_html() -> str:
    """The uploader's markup: file, kind, button, a progress bar and a status line. Gradio
    treats it as a JS template string and a Handlebars template, so it holds no backtick, no
    ``${`` and no ``{{``."""
    options = "".join(
        f'<option value="{kind}">{html.escape(kind)}</option>' for kind in UPLOAD_KINDS
    )
    return (
        '<div class="ab-uploader">'
        '<div class="ab-uploader-row">'
        '<label>Model file <input type="file" class="ab-up-file" '
        'accept=".safetensors,.pth"></label>'
        f'<label>Upload kind <select class="ab-up-kind">{options}</select></label>'
        '<button type="button" class="ab-up-start">Upload</button>'
        "</div>"
        f"{bar('Upload', 0, 'no file chosen', state='queued')}"
        '<div class="ab-up-status" role="status"></div>'
        "</div>"
    )


# Runs in the browser when the uploader mounts (Gradio passes `element` and `trigger`). The
# upload API lives beside the page: strip the UI's path (and keep any proxy prefix before it).
UPLOADER_JS = """
const CHUNK = __CHUNK__, TRIES = __TRIES__;
const base = window.location.pathname.replace(/\\/ui(\\/.*)?$/, "") + "__UPLOADS__";
const pick = (selector) => element.querySelector(selector);
const fileInput = pick(".ab-up-file"), kindSelect = pick(".ab-up-kind");
const start = pick(".ab-up-start"), status = pick(".ab-up-status");
const progress = pick("[role=progressbar]");
const fill = progress.querySelector(".ab-bar-fill"), text = progress.querySelector(".ab-bar-text");

function show(done, total, note, state) {
  const percent = total ? Math.floor((done * 100) / total) : 0;
  progress.setAttribute("aria-valuenow", String(percent));
  progress.className = "ab-bar ab-" + state;
  fill.style.width = percent + "%";
  text.textContent = note || percent + "%";
}

function headers(extra) {
  // The key typed in the page's "API key" box, read at each request so a key typed after
  // the page opened is used.
  const box = document.querySelector("#ab-api-key input, #ab-api-key textarea");
  const key = box ? box.value.trim() : "";
  return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {});
}

async function call(method, path, body, extra) {
  const response = await fetch(base + path, { method, body, headers: headers(extra) });
  const answer = await response.json().catch(() => ({ message: response.statusText }));
  if (!response.ok) {
    const error = new Error(answer.message || response.statusText);
    error.status = response.status;
    throw error;
  }
  return answer;
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function send(upload, file) {
  // `offset` null: unknown after a failure, so ask the service where the upload stands.
  let offset = upload.next_offset, failures = 0;
  while (offset === null || offset < file.size) {
    try {
      if (offset === null) offset = (await call("GET", "/" + upload.id)).next_offset;
      const end = Math.min(offset + CHUNK, file.size);
      const range = "bytes " + offset + "-" + (end - 1) + "/" + file.size;
      const answer = await call("PUT", "/" + upload.id, file.slice(offset, end), {
        "Content-Range": range,
        "Content-Type": "application/octet-stream",
      });
      offset = answer.next_offset;
      failures = 0;
      show(offset, file.size, "", "running");
    } catch (error) {
      // A refusal (4xx other than 409) will not change on a retry; a broken connection (no
      // status), a server error or a 409 (the service holds other bytes than we thought) may.
      const retry = error.status === undefined || error.status === 409 || error.status >= 500;
      failures += 1;
      if (!retry || failures >= TRIES) throw error;
      status.textContent = "Connection trouble (" + error.message + "); going on from where "
        + "the service stands…";
      await wait(Math.min(500 * 2 ** failures, 10000));
      offset = null;
    }
  }
}

async function begin(file, kind) {
  // One upload per file and kind, remembered so that Upload after a failure (or in a page
  // opened later) resumes it.
  const memo = "assetbox-upload:" + [file.name, file.size, file.lastModified, kind].join(":");
  const known = window.localStorage.getItem(memo);
  if (known) {
    try {
      return [memo, await call("GET", "/" + known)];
    } catch (error) {
      if (error.status !== 404) throw error;
      window.localStorage.removeItem(memo);
    }
  }
  const upload = await call("POST", "", JSON.stringify({ name: file.name, kind, size: file.size }),
    { "Content-Type": "application/json" });
  window.localStorage.setItem(memo, upload.id);
  return [memo, upload];
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  show(0, 1, file ? "ready" : "no file chosen", "queued");
  status.textContent = "";
});

start.addEventListener("click", async () => {
  const file = fileInput.files[0];
  if (!file) {
    status.textContent = "Choose a model file first.";
    return;
  }
  const kind = kindSelect.value;
  start.disabled = true;
  try {
    status.textContent = "Uploading " + file.name + " as a " + kind + "…";
    const [memo, upload] = await begin(file, kind);
    show(upload.next_offset, file.size, "", "running");
    await send(upload, file);
    show(file.size, file.size, "100% · importing", "running");
    status.textContent = "Checking and importing " + file.name + "…";
    const manifest = await call("POST", "/" + upload.id + "/complete");
    window.localStorage.removeItem(memo);
    show(file.size, file.size, "100% · done", "done");
    status.textContent = "Added " + manifest.id + " (" + manifest.kind
      + (manifest.family ? ", " + manifest.family : "") + ").";
    trigger("upload", { model_id: manifest.id });
  } catch (error) {
    progress.className = "ab-bar ab-failed";
    text.textContent = "failed";
    status.textContent = "Upload failed: " + error.message;
  } finally {
    start.disabled = false;
  }
});
"""


def render(service: Service, key: gr.Textbox) -> None:
    """The tab's components and events, inside the caller's ``gr.Tab``; `key` is the page's
    API key box. Refusals of the service show as Gradio errors (`relay`)."""
    with gr.Row():
        kind = gr.Dropdown(KIND_FILTER, value="all", label="Kind", scale=0, min_width=180)
        refresh = gr.Button("Refresh", scale=0)
    table = gr.Dataframe(
        headers=COLUMNS,
        datatype=["str"] * len(COLUMNS),
        value=[],
        interactive=False,
        label="Models (by kind and family; click a row to select it)",
        elem_id="ab-models-table",
    )
    with gr.Row():
        selected = gr.Textbox(label="Selected model", placeholder="click a row", scale=3)
        delete = gr.Button("Delete", variant="stop", scale=0)
        confirm = gr.Button("Confirm delete", variant="stop", scale=0, min_width=260, visible=False)
        keep = gr.Button("Keep it", scale=0, visible=False)
    message = gr.Markdown(elem_id="ab-models-message")
    # The model a revealed "Confirm delete" button names: what it deletes, even if the
    # selection box was edited since.
    pending = gr.State("")
    gr.Markdown("### Upload a model (.safetensors, or a .pth upscaler)")
    uploader = gr.HTML(
        html_template=uploader_html(),
        js_on_load=UPLOADER_JS.replace("__CHUNK__", str(CHUNK_BYTES))
        .replace("__TRIES__", str(CHUNK_TRIES))
        .replace("__UPLOADS__", UPLOADS_PATH),
        css_template=UPLOADER_CSS,
        elem_id="ab-model-uploader",
    )

    @relay
    def load(key: str, kind: str) -> list[list[str]]:
        with service.client(key) as api:
            return rows(api.models(**({} if kind == "all" else {"kind": kind})))

    def select(event: gr.SelectData) -> str:
        row = event.row_value if event.row_value else []
        return row[0] if row else ""

    def ask(model_id: str) -> tuple[Any, Any, str, str]:
        model_id = model_id.strip()
        if not model_id:
            raise gr.Error("select a model first (click its row)")
        return (
            gr.Button(f"Confirm delete {model_id}", visible=True),
            gr.Button(visible=True),
            model_id,
            f"Delete `{model_id}` from the store? Jobs that name it will be refused.",
        )

    def hide() -> tuple[Any, Any, str, str]:
        return gr.Button(visible=False), gr.Button(visible=False), "", ""

    @relay
    def remove(key: str, model_id: str) -> tuple[Any, Any, str, str]:
        with service.client(key) as api:
            gone = api.delete_model(model_id)
        return (
            gr.Button(visible=False),
            gr.Button(visible=False),
            "",
            f"Deleted `{gone['id']}` ({gone['kind']}, {size_text(gone['size'])}).",
        )

    def uploaded(event: gr.EventData) -> str:
        return f"Uploaded `{getattr(event, 'model_id', '')}`."

    buttons = [confirm, keep, pending, message]
    # Opening the page loads the list: a load-only event (no inputs), then the load itself.
    gr.on(None, None).then(load, [key, kind], table)
    gr.on([refresh.click, kind.change, key.submit], load, [key, kind], table)
    table.select(select, None, selected)
    selected.change(hide, None, buttons)
    delete.click(ask, selected, buttons)
    keep.click(hide, None, buttons)
    confirm.click(remove, [key, pending], buttons).then(load, [key, kind], table)
    uploader.upload(uploaded, None, message).then(load, [key, kind], table)


UPLOADER_CSS = """
.ab-uploader { display: flex; flex-direction: column; gap: 8px; }
.ab-uploader-row { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
.ab-uploader label { display: flex; gap: 6px; align-items: center; }
.ab-up-start { padding: 4px 16px; border-radius: 6px; border: 1px solid var(--border-color-primary);
  background: var(--button-secondary-background-fill); cursor: pointer; }
.ab-up-start:disabled { opacity: .5; cursor: progress; }
"""


def upload_relay(service: Service) -> APIRouter:
    """The upload routes (create, state, chunk, complete) of `service`, each request streamed
    to it: the API key the page sent (or, when it sent none, the one the UI was given), the
    ``Content-Range`` and the body go on; its status and JSON come back. An unreachable
    service answers 502."""
    router = APIRouter(prefix=UPLOADS_PATH, include_in_schema=False)

    async def forward(request: Request, path: str) -> Response:
        headers = {
            name: request.headers[name]
            for name in ("authorization", "content-range", "content-type", "content-length")
            if name in request.headers
        }
        if "authorization" not in headers and service.api_key:
            headers["authorization"] = f"Bearer {service.api_key}"
        # A client per request: a chunk is megabytes, so a new connection costs little, and
        # nothing outlives the request (no client to close when the app stops). Completion
        # hashes and imports the whole file, so it may take minutes.
        timeout = httpx.Timeout(3600, connect=10)
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=timeout) as client:
                upstream = await client.request(
                    request.method,
                    UPLOADS_PATH + path,
                    headers=headers,
                    # Streamed, with the browser's Content-Length kept (httpx then sends no
                    # chunked encoding), so the service can refuse an oversized body up front.
                    content=request.stream() if request.method in ("POST", "PUT") else None,
                )
        except httpx.TransportError as error:
            return JSONResponse(
                {
                    "error": "bad_gateway",
                    "message": f"the service cannot be reached: {type(error).__name__}",
                },
                status_code=502,
            )
        passed = {
            name: upstream.headers[name]
            for name in ("www-authenticate", "x-request-id")
            if name in upstream.headers
        }
        return Response(
            content=upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
            headers=passed,
        )

    @router.post("")
    async def create(request: Request) -> Response:
        return await forward(request, "")

    @router.get("/{upload_id}")
    async def state(upload_id: UploadId, request: Request) -> Response:
        return await forward(request, f"/{upload_id}")

    @router.put("/{upload_id}")
    async def chunk(upload_id: UploadId, request: Request) -> Response:
        return await forward(request, f"/{upload_id}")

    @router.post("/{upload_id}/complete")
    async def complete(upload_id: UploadId, request: Request) -> Response:
        return await forward(request, f"/{upload_id}/complete")

    return router
