"""PLACEHOLDER: the helper that owns this tab replaces this file."""

import gradio as gr


def render(service, key) -> None:
    gr.Markdown("upscale: being built")
