"""What every tab shares: the service behind the UI, its errors as Gradio's, jobs followed to
the end, progress bars, and files handed to Gradio by path (served as URLs, never base64).

The UI talks to the service only over HTTP through `assetbox.client`, with the API key the
user typed (or the one `assetbox ui --api-key` was given), so it runs the same mounted in the
service at ``/ui`` and on a laptop against a remote server.
"""

from __future__ import annotations

import base64
import functools
import html
import inspect
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import httpx

from assetbox.client import ApiError, Client

P = ParamSpec("P")
T = TypeVar("T")

TERMINAL = {"succeeded", "failed", "cancelled"}
# The path the UI is mounted at, in the service and in `assetbox ui` alike.
UI_PATH = "/ui"


@dataclass(frozen=True)
class Service:
    """The service the UI drives: its base URL, and the key to use when the user types none."""

    url: str
    api_key: str | None = None
    # Where the UI keeps the files it hands to Gradio (outputs, thumbnails); Gradio copies them
    # into its own cache and serves them by URL.
    files: Path = Path(tempfile.gettempdir()) / "assetbox-ui"

    def client(self, key: str | None) -> Client:
        return Client(self.url, api_key=(key or "").strip() or self.api_key, timeout=600)

    def scratch(self) -> Path:
        """A new folder for one request's files."""
        self.files.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.files))


def error_text(error: ApiError) -> str:
    where = f" `{error.field}`" if error.field else ""
    return f"{error.code}{where}: {error.message}"


def relay(fn: Callable[P, T]) -> Callable[P, T]:
    """A handler that relays to the service, with the service's refusals (and an unreachable
    service) shown to the user as a Gradio error naming the field the service named.

    Relaying handlers wait on the service, not on this process's CPU, so the app's queue gives
    them no concurrency limit (`assetbox.ui.build`): one user's job never waits for another's.
    """

    def convert(error: Exception) -> gr.Error:
        if isinstance(error, ApiError):
            return gr.Error(error_text(error))
        return gr.Error(f"the service cannot be reached: {error}")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: P.args, **kwargs: P.kwargs):  # type: ignore[no-untyped-def]
            try:
                yield from fn(*args, **kwargs)  # type: ignore[misc]
            except (ApiError, httpx.TransportError) as error:
                raise convert(error) from error

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (ApiError, httpx.TransportError) as error:
            raise convert(error) from error

    return plain


def follow(client: Client, job_id: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(event, job) for each of the job's events until its end.

    `job` is kept current from the events: ``status``, ``progress``, and ``units`` (unit index
    → its last status: running, done, pending after a failure that is retried, failed); at the
    end it is fetched whole (outputs, result, error), ``units`` kept.
    """
    job = client.job(job_id)
    units: dict[int, str] = {}
    job["units"] = units
    if job["status"] in TERMINAL:
        yield {"type": "status", "data": {"status": job["status"]}}, job
        return
    for event in client.events(job_id):
        data = event.get("data", {})
        if event.get("type") == "progress":
            job["progress"] = data
            if data.get("unit") is not None and units.get(data["unit"]) != "done":
                units[data["unit"]] = "running"
        elif event.get("type") == "unit":
            units[data["index"]] = data["status"]
        elif event.get("type") == "status":
            job["status"] = data.get("status", job["status"])
        if job["status"] in TERMINAL:
            break
        yield event, job
    job = client.job(job_id) | {"units": units}
    yield {"type": "status", "data": {"status": job["status"]}}, job


def bar(label: str, fraction: float, text: str = "", *, state: str = "running") -> str:
    """One labelled progress bar as HTML (`state`: queued, running, done, failed)."""
    width = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="ab-bar ab-{html.escape(state)}" role="progressbar" '
        f'aria-label="{html.escape(label)}" aria-valuenow="{width:.0f}" '
        f'aria-valuemin="0" aria-valuemax="100">'
        f'<span class="ab-bar-label">{html.escape(label)}</span>'
        f'<span class="ab-bar-fill" style="width:{width:.1f}%"></span>'
        f'<span class="ab-bar-text">{html.escape(text)}</span></div>'
    )


def unit_bars(job: dict[str, Any], labels: list[str]) -> str:
    """A bar per unit of `job` (as `follow` keeps it; the units are the job's images, in
    order): done units full, a running one at its step, the others waiting."""
    progress = job.get("progress") or {}
    units = job.get("units") or {}
    status = job.get("status", "queued")
    parts = []
    for index, label in enumerate(labels):
        state = "done" if status == "succeeded" else units.get(index, "queued")
        if state == "done":
            parts.append(bar(label, 1, "done", state="done"))
        elif state == "failed" or status in ("failed", "cancelled"):
            parts.append(bar(label, 0, status if state != "failed" else "failed", state="failed"))
        elif state == "running" and progress.get("unit") == index and progress.get("steps"):
            step, steps = int(progress["step"]), int(progress["steps"])
            parts.append(bar(label, step / steps, f"step {step}/{steps}"))
        elif state == "running":
            parts.append(bar(label, 0, "running", state=state))
        else:
            # A unit not started yet while others run waits for a worker; it is not running.
            text = "waiting" if status in ("running", "cancelling") else status
            parts.append(bar(label, 0, text, state=state))
    return '<div class="ab-bars">' + "".join(parts) + "</div>"


LORA_HEADERS = ["LoRA", "weight"]


def lora_table(label: str) -> gr.Dataframe:
    """The LoRAs of the chosen model's family, one row each with an editable weight (the
    Generate, Edit and Tile Upscale tabs)."""
    return gr.Dataframe(
        headers=LORA_HEADERS,
        datatype=["str", "number"],
        value=[],
        type="array",
        static_columns=[0],
        label=label,
        interactive=True,  # its weights are typed in, wherever the handler takes them
    )


def lora_refs(rows: Any) -> list[dict[str, Any]]:
    """The LoRA table's rows with a weight as the request's ``loras``; a row with weight 0 or
    none is a LoRA not used (the table lists all the family's LoRAs)."""
    if rows is None:
        return []
    if hasattr(rows, "values"):  # a DataFrame, whatever type the component hands over
        rows = rows.values.tolist()
    refs = []
    for row in rows:
        name = str(row[0] or "").strip() if row else ""
        weight = row[1] if len(row) > 1 else None
        if not name or weight in (None, "") or float(weight) == 0:
            continue
        refs.append({"name": name, "weight": float(weight)})
    return refs


def typed(text: str | float | None) -> Any:
    """A number box's text as the request's value: empty is None (the service's default), a
    number as a number, anything else as typed, so the service refuses it naming its field."""
    if text is None or isinstance(text, int | float):
        return text
    text = text.strip()
    if not text:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def b64_file(path: str | Path) -> str:
    """An uploaded file's bytes as base64, as the service takes input images in JSON."""
    return base64.b64encode(Path(path).read_bytes()).decode()


def gallery_paths(items: Any) -> list[str]:
    """The files of an interactive gallery's value (``[(path, caption), ...]`` or paths), in
    order; none for an empty gallery."""
    paths = []
    for item in items or []:
        path = item[0] if isinstance(item, list | tuple) else item
        if isinstance(path, dict):  # a FileData, as Gradio's API client sends it
            path = path.get("path")
        if path:
            paths.append(str(path))
    return paths


NO_IP_ADAPTER = "none"


@dataclass
class IPAdapterForm:
    """An IP-Adapter picker (the checkpoint family's adapters), its image and scale, in an
    accordion shown only for the families that take one (SD 1.5, SDXL)."""

    box: gr.Accordion
    model: gr.Dropdown
    image: gr.Image
    scale: gr.Slider

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.model, self.image, self.scale]


def ip_adapter_form(image_label: str) -> IPAdapterForm:
    """The IP-Adapter accordion (inside the caller's layout); `image_label` says what an empty
    image means."""
    with gr.Accordion("IP-Adapter (image prompt)", open=False, visible=False) as box:
        with gr.Row():
            # Custom values: the family's adapters arrive when a checkpoint is picked, which a
            # caller of the Gradio API never does; the service checks the id.
            # Interactive said outright: where a tab's handler takes its inputs only inside a
            # gr.render (Tile Upscale), Gradio would take the picker for an output only.
            model = gr.Dropdown(
                [NO_IP_ADAPTER],
                value=NO_IP_ADAPTER,
                label="IP-Adapter",
                scale=2,
                allow_custom_value=True,
                interactive=True,
            )
            scale = gr.Slider(
                0,
                2,
                value=0.6,
                step=0.05,
                label="IP-Adapter scale",
                info="0: no effect",
                interactive=True,
            )
        image = gr.Image(
            type="filepath",
            label=image_label,
            sources=["upload", "clipboard"],
            height=200,
            interactive=True,
        )
    return IPAdapterForm(box, model, image, scale)


def ip_adapter_updates(api: Client, family: str, takes_adapter: bool) -> list[Any]:
    """Updates for an `IPAdapterForm`'s accordion and picker on a checkpoint of `family`:
    shown with the family's adapters where `takes_adapter`, hidden and reset elsewhere."""
    if not takes_adapter:
        return [
            gr.Accordion(visible=False),
            gr.Dropdown(choices=[NO_IP_ADAPTER], value=NO_IP_ADAPTER),
        ]
    adapters = api.models(kind="ip_adapter", family=family)
    choices = [NO_IP_ADAPTER, *(m["id"] for m in adapters)]
    return [gr.Accordion(visible=True), gr.Dropdown(choices=choices, value=NO_IP_ADAPTER)]


def ip_adapter_field(
    model: str | None, image: str | None, scale: float | None
) -> dict[str, Any] | None:
    """The request's ``ip_adapter`` ({model, image base64, scale}), or None when none is
    picked; without an image the service uses the input image (or, for generate, refuses)."""
    if not model or model == NO_IP_ADAPTER:
        return None
    field: dict[str, Any] = {"model": model}
    if image:
        field["image"] = b64_file(image)
    if scale is not None:
        field["scale"] = float(scale)
    return field


def save_output(client: Client, job: dict[str, Any], index: int, folder: Path) -> Path:
    """Output `index` of `job` downloaded into `folder`; the path Gradio serves it from."""
    output = job["outputs"][index]
    suffix = Path(output.get("url", "")).suffix or ".png"
    path = folder / f"{job['id']}-{index}{suffix}"
    path.write_bytes(client.output(job["id"], index))
    return path


CSS = """
.ab-bars { display: flex; flex-direction: column; gap: 4px; }
.ab-bar { position: relative; height: 22px; border-radius: 4px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.ab-bar-fill { position: absolute; left: 0; top: 0; bottom: 0; background: #6aa6ff; }
.ab-done .ab-bar-fill { background: #47b36b; }
.ab-failed .ab-bar-fill { background: #d9534f; width: 100% !important; opacity: .35; }
.ab-bar-label, .ab-bar-text { position: relative; z-index: 1; font-size: 12px; padding: 0 6px;
  line-height: 22px; }
.ab-bar-text { float: right; }
/* Tile Upscale's mosaic: one card per tile; the thumbnail without the image block's frame. */
.ab-tile .block { border-width: 0 !important; }
.ab-tile img { object-fit: contain; }
"""
