"""PLACEHOLDER: the helper that owns this tab replaces this file."""

import gradio as gr
from fastapi import APIRouter


def render(service, key) -> None:
    gr.Markdown("models: being built")


def upload_relay(service) -> APIRouter:
    return APIRouter()
