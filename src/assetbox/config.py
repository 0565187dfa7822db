"""Settings: the one place that reads the environment (prefix ``ASSETBOX_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The foreign HTTP shapes compat/ can serve (the `compat` setting names those served).
COMPAT_SHAPES = ("flux", "qwen_edit", "generation_api")


class Settings(BaseSettings):
    """Embedded defaults that run on a laptop; every field can be set as ``ASSETBOX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ASSETBOX_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"),
        description="Where the job database, results and the model store live.",
    )
    max_image_pixels: int = Field(
        default=16384 * 16384,
        gt=0,
        description=(
            "Largest image (width x height) accepted for decoding; larger ones are refused from "
            "their header, before any pixel is decoded (decompression-bomb guard)."
        ),
    )
    max_image_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest encoded image accepted, in bytes.",
    )

    executor: Literal["local", "thread", "ray"] = Field(
        default="local",
        description="Where units run: `local`, one worker process per worker on this machine "
        "(a unit that does not stop when cancelled is killed with its process); `thread`, "
        "threads in this process (the CLI's in-process runs; a stuck unit can only be "
        "abandoned, not stopped); `ray`, Ray actors.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Workers (one per device or Ray actor). On a Ray cluster joined by "
        "ray_address, the cluster's GPUs decide (see ray_max_workers).",
    )
    worker_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of each local worker process (torch); default: the machine's "
        "cores split between the workers.",
    )
    worker_start: Literal["auto", "forkserver", "spawn"] = Field(
        default="auto",
        description="How local worker processes start: `forkserver` forks them from a process "
        "that imported torch and diffusers once (fast restarts); `spawn` starts each afresh. "
        "`auto`: spawn where an NVIDIA device exists (CUDA must not be touched before a fork), "
        "else forkserver.",
    )
    cancel_grace_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="A unit still running this long after its job was cancelled (or failed) is "
        "abandoned: its worker process is killed and replaced.",
    )
    shutdown_grace_s: float = Field(
        default=3.0,
        ge=0,
        le=60,
        description="On SIGTERM/SIGINT, running units get this long to stop at a step before "
        "their workers are killed; their jobs go back to the queue and resume at the next start.",
    )
    progress_events_per_s: float = Field(
        default=5.0,
        gt=0,
        description="Most step-progress events per second per job (the last step of a unit is "
        "always sent); the job's progress in the store is throttled the same way.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; none starts a local Ray instance."
    )
    ray_cpus_per_worker: float = Field(
        default=1, gt=0, description="CPUs each Ray worker reserves on a cluster without GPUs."
    )
    ray_gpus_per_worker: float | None = Field(
        default=None,
        ge=0,
        description="GPUs each Ray worker reserves; default: 1 when the cluster has GPUs, else 0 "
        "(set it to 1 where GPU nodes are only started by the autoscaler).",
    )
    ray_max_workers: int = Field(
        default=0,
        ge=0,
        description="Ray: at most this many workers (actors). 0: one per GPU (or per "
        "ray_cpus_per_worker CPUs on a cluster without GPUs) on every node, following nodes as "
        "they join and leave. Without ray_address, a local Ray instance of `workers` is started.",
    )
    ray_autoscale: bool = Field(
        default=False,
        description="Ray: when units wait, ask Ray's autoscaler for more workers "
        "(request_resources); after ray_idle_s without work, release idle workers and withdraw "
        "the request so that idle nodes can go.",
    )
    ray_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="Ray with ray_autoscale: seconds without waiting units before idle workers "
        "are released.",
    )
    worker_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "assetbox" / "worker",
        description="On a Ray worker node: its own cache of the models (by sha256) and input "
        "images shipped from the head. Workers never use the head's data directory.",
    )
    shared_models_dir: Path | None = Field(
        default=None,
        description="On a Ray worker node: a folder laid out as the store's `models/` (e.g. a "
        "volume every node mounts); models are read from it instead of being shipped.",
    )
    max_queued_jobs: int = Field(
        default=1000, ge=1, description="Past this many queued jobs, submit refuses (429)."
    )
    max_running_jobs_per_key: int = Field(
        default=0,
        ge=0,
        description="Running jobs one API key may have at once (0: no limit); its further jobs "
        "wait in the queue while other keys' jobs run.",
    )
    unit_max_attempts: int = Field(
        default=3, ge=1, description="Attempts of a unit that fails with a transient error."
    )
    reuse_results: bool = Field(
        default=False,
        description="An identical request returns the earlier job's outputs instead of "
        "computing them again.",
    )

    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when any is set, every route but /health needs "
        "`Authorization: Bearer <key>`.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file with one API key per line (added to api_keys)."
    )
    auth: Literal["keys", "hf", "none"] | None = Field(
        default=None,
        description="Who may call the API (every route but /health, the docs and the UI): "
        "`keys`, a Bearer key of api_keys/api_keys_file; `hf`, a Bearer Hugging Face token "
        "with read access, checked with huggingface_hub's whoami against HF_ENDPOINT; `none`, "
        "anyone. Default: `keys` when keys are configured, else `none`.",
    )
    auth_cache_s: float = Field(
        default=300,
        ge=0,
        le=86400,
        description="`auth=hf`: how long a token's whoami answer is kept (a refused token's "
        "for a tenth of it, so a token fixed on the Hub works again soon).",
    )
    max_request_bytes: int = Field(
        default=96 * 1024 * 1024, gt=0, description="Largest HTTP request body (413 past it)."
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Let image URLs point at loopback, private and link-local addresses "
        "(refused by default: server-side request forgery).",
    )
    url_timeout_s: float = Field(default=15, gt=0, description="Timeout for fetching image URLs.")
    webhook_secret: str = Field(
        default="",
        description="HMAC-SHA256 key for webhook signatures; empty: one is generated and kept "
        "in <data_dir>/webhook_secret.",
    )
    model_cache_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Memory budget for loaded models per worker device, in bytes; the least "
        "recently used idle model is evicted past it. Default: 85% of a GPU's memory, or half "
        "of the machine's RAM on CPU.",
    )
    quantization: Literal["none", "int8", "fp8"] = Field(
        default="none",
        description="Weight quantization of diffusion models (torchao): int8 on CPU or CUDA, "
        "fp8 on CUDA GPUs of compute capability 8.9+; refused where it cannot run.",
    )
    nsfw: Literal["off", "flag", "blur", "block"] = Field(
        default="off",
        description="Check every image output for nudity (NudeNet; needs the `nsfw` extra): "
        "`flag` marks it (`nsfw_detected`, `nsfw_score`), `blur` also pixelates the flagged "
        "regions, `block` fails the job and stores no output. Refused at start without the extra.",
    )
    nsfw_classes: str = Field(
        default="FEMALE_BREAST_EXPOSED,FEMALE_GENITALIA_EXPOSED,MALE_GENITALIA_EXPOSED,"
        "BUTTOCKS_EXPOSED,ANUS_EXPOSED",
        description="Comma-separated NudeNet classes that count as NSFW (any of its 18, e.g. "
        "FACE_FEMALE); other detections are reported but not flagged.",
    )
    nsfw_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Least detector score of a flagged class that marks an output as NSFW.",
    )
    server_url: str | None = Field(
        default=None,
        description="CLI: send jobs to this assetbox server (e.g. http://gpu-box:7000) instead "
        "of running them in the CLI's own process.",
    )
    api_key: str | None = Field(default=None, description="CLI: the API key for `server_url`.")
    metrics_public: bool = Field(default=False, description="Serve /metrics without an API key.")
    compat: str = Field(
        default=",".join(COMPAT_SHAPES),
        description="The foreign HTTP shapes `assetbox serve` also answers (compat/), "
        "comma-separated: `flux` (the FLUX.2-klein service: POST /generate, POST /upscale, "
        "its fields in /health), `qwen_edit` (the Qwen edit service: POST /edit-image, "
        "GET /model-info, POST /model-config), `generation_api` (the generation API's "
        "/v1/models/load, /v1/loras/*, /v1/generate/ws). Empty: none.",
    )
    compat_flux_model: str | None = Field(
        default=None,
        description="The checkpoint the FLUX.2-klein shape's /generate runs (a store id); "
        "default: the store's only (or first) flux2_klein checkpoint.",
    )
    compat_flux_upscaler: str = Field(
        default="realesrgan-x4plus",
        description="The upscaler the FLUX.2-klein shape's `upscale` and /upscale run (a store "
        "id); default the seed's, Real-ESRGAN x4plus (built in).",
    )
    compat_qwen_edit_model: str | None = Field(
        default=None,
        description="The checkpoint the Qwen edit shape's /edit-image runs (a store id); "
        "default: the store's only (or first) qwen_image_edit(_plus) checkpoint.",
    )
    runpod_endpoint_id: str | None = Field(
        default=None,
        validation_alias="RUNPOD_ENDPOINT_ID",
        description="Set by RunPod itself (RUNPOD_ENDPOINT_ID) on its serverless workers: the "
        "worker (`python -m assetbox.runpod`) then reports progress to RunPod and keeps "
        "data_dir on the network volume, /runpod-volume/assetbox, unless ASSETBOX_DATA_DIR "
        "is set.",
    )
    ui: bool = Field(
        default=True,
        description="`assetbox serve` serves the web UI at /ui (it needs the `ui` extra); the "
        "page is open, its calls to the API carry the key typed into it.",
    )

    @field_validator("compat")
    @classmethod
    def _known_shapes(cls, value: str) -> str:
        unknown = [n for n in compat_names(value) if n not in COMPAT_SHAPES]
        if unknown:
            raise ValueError(
                f"unknown shape {unknown[0]!r}; the shapes are {', '.join(COMPAT_SHAPES)}"
            )
        return value


def compat_names(value: str) -> list[str]:
    """The shape names of a `compat` setting's value."""
    return [name.strip() for name in value.split(",") if name.strip()]


_pinned: Settings | None = None


def pin_settings(settings: Settings | None) -> None:
    """Make `settings` the process-wide settings instead of the environment's (a worker process
    takes its parent's, which may not come from the environment); None unpins."""
    global _pinned
    _pinned = settings


@lru_cache(maxsize=1)
def _from_environment() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once (unless pinned)."""
    return _pinned if _pinned is not None else _from_environment()


get_settings.cache_clear = _from_environment.cache_clear  # type: ignore[attr-defined]
