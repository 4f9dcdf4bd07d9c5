"""A tab whose capability has not landed yet says what it will hold."""

import gradio as gr


def build(text: str) -> None:
    gr.Markdown(text)
